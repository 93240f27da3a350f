#!/usr/bin/env python
"""The feeds example: ``python manage.py runserver`` for the site, ``python manage.py
qlite_worker`` for the worker (``make demo-web`` starts both on a local SeaweedFS)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "feedsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
