from django.apps import AppConfig


class QliteConfig(AppConfig):
    """Installs ``manage.py qlite_worker``."""

    name = "qlite.django"
    label = "qlite_django"
    verbose_name = "qlite"
