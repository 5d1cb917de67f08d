"""What the tests share, each defined once.

* ``sessions.py``: the recording ``requests`` session (what was sent, with bodies and timeouts);
* ``events.py``: Pacifica ``Files`` objects and Notifications events, archived on the stack or not;
* ``tars.py``: tars of any members, in any format, and Cartd-shaped ones.

The stack (cartd_stack.py), the stub Cartd (stub_cartd.py), the fault proxy (fault_proxy.py), the
released programs' venv (released_programs.py) and the small helpers (helpers.py) still live beside the
tests, which import them by name.
"""
