"""Django's own test cases of ``tests/tasks``, subclassed to run on qlite (run.py).

The backend is QliteBackend plus a worker draining in between: each enqueue is followed by
a burst of a real qlite Worker (in this process, on the SeaweedFS of run.py) and a
``refresh()``, so a test that expects the result of ImmediateBackend sees the job done.
Skipped: only the tests that assert the identity or the private state of Django's Dummy and
Immediate backends, each with its reason. Not subclassed: test_custom_backend.py (a backend
class of its own) and the TransactionTestCase classes (their TASKS names Django's backends on
the test method itself).
"""

from __future__ import annotations

import unittest

from django.test import override_settings
from draining import QUEUES
from tasks import test_dummy_backend, test_immediate_backend, test_tasks

QLITE = {"BACKEND": "draining.DrainingQliteBackend", "QUEUES": QUEUES,
         "OPTIONS": {"max_attempts": 1}}


def identity(backend: str):
    return unittest.skip(f"asserts that the backend is Django's {backend}")


@override_settings(TASKS={"default": {**QLITE, "QUEUES": []}})  # [] as in Django's: any queue
class ImmediateTestsOnQlite(test_immediate_backend.ImmediateBackendTestCase):
    test_using_correct_backend = identity("ImmediateBackend")(
        test_immediate_backend.ImmediateBackendTestCase.test_using_correct_backend)
    test_throws_keyboard_interrupt = identity(
        "ImmediateBackend, which runs the task in the caller (a worker's KeyboardInterrupt "
        "stops the worker, not enqueue)")(
        test_immediate_backend.ImmediateBackendTestCase.test_throws_keyboard_interrupt)
    test_cannot_get_result = identity("ImmediateBackend, which cannot read results (qlite can)")(
        test_immediate_backend.ImmediateBackendTestCase.test_cannot_get_result)
    test_cannot_refresh_result = identity("ImmediateBackend, which cannot refresh (qlite can)")(
        test_immediate_backend.ImmediateBackendTestCase.test_cannot_refresh_result)
    test_cannot_pass_run_after = identity("ImmediateBackend, which has no run_after "
                                          "(qlite has)")(
        test_immediate_backend.ImmediateBackendTestCase.test_cannot_pass_run_after)


@override_settings(TASKS={"default": {**QLITE, "BACKEND": "qlite.django.QliteBackend"},
                          "immediate": {**QLITE, "QUEUES": []},
                          "missing": {"BACKEND": "does.not.exist"}})
class TaskTestsOnQlite(test_tasks.TaskTestCase):
    """Django's Task API tests with the plain qlite backend as default (no drain: a result
    stays READY, as on DummyBackend)."""

    def setUp(self):  # DummyBackend.clear(): qlite's results stay in the bucket
        pass

    test_using_correct_backend = identity("DummyBackend")(
        test_tasks.TaskTestCase.test_using_correct_backend)
    test_get_backend = identity("DummyBackend and ImmediateBackend")(
        test_tasks.TaskTestCase.test_get_backend)
    test_enqueue_task = identity("DummyBackend (its in-memory .results)")(
        test_tasks.TaskTestCase.test_enqueue_task)
    test_enqueue_task_async = identity("DummyBackend (its in-memory .results)")(
        test_tasks.TaskTestCase.test_enqueue_task_async)


@override_settings(TASKS={"default": {**QLITE, "BACKEND": "qlite.django.QliteBackend",
                                      "QUEUES": []}})
class DummyTestsOnQlite(test_dummy_backend.DummyBackendTestCase):
    """Django's DummyBackend tests with the plain qlite backend (no drain: results READY)."""

    def setUp(self):  # DummyBackend.clear(): qlite's results stay in the bucket
        pass

    test_using_correct_backend = identity("DummyBackend")(
        test_dummy_backend.DummyBackendTestCase.test_using_correct_backend)


for _name, _what in [("test_enqueue_task", ".results"), ("test_enqueue_task_async", ".results"),
                     ("test_refresh_result", ".results"),
                     ("test_refresh_result_async", ".results"), ("test_clear", ".clear()")]:
    setattr(DummyTestsOnQlite, _name, identity(f"DummyBackend (its in-memory {_what})")(
        getattr(test_dummy_backend.DummyBackendTestCase, _name)))
