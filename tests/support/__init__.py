"""What the tests share, each defined once.

* ``sessions.py``: the recording ``requests`` session (what was sent, with bodies and timeouts);
* ``events.py``: Pacifica ``Files`` objects and Notifications events, archived on the stack or not;
* ``tars.py``: tars of any members, in any format, and Cartd-shaped ones;
* ``child.py``: a download run in a child process and SIGKILLed mid-stream;
* ``processes.py``: how the tests run a child process: its environment, on a pseudo-terminal, its peak memory;
* ``service.py``: ``pacifica-downloader serve`` as a process of its own, and waiting on what can be observed;
* ``helpers.py``: the small helpers (a fake clock, fake responses, tree and leftover assertions);
* ``stub_cartd.py``: the one stub Cartd, configured per test, or serving an archive as test_cli's CartdStub sets it up;
* ``fault_proxy.py``: a TCP proxy whose faults a test sets;
* ``cartd_stack.py``: the real Cartd stack, and ``facility_stack.py`` a whole facility around one (both also run
  as scripts: ``python3 tests/support/cartd_stack.py up``);
* ``download_workers.py``: this library's Celery download workers on the stack's Redis;
* ``released_programs.py``: the venv of pacifica-cli and pacifica-dispatcher with this library over them;
* ``download_child.py``: the script :mod:`child` and the memory tests run in a child process.

Only the test modules and conftest.py live directly in tests/; the tests, dev.py, the demo and the benchmarks
(which put tests/ on ``sys.path``) import these as ``support.<module>``.
"""
