"""Make aiocometd 0.4.5 (2019) run on Python >= 3.10.

aiocometd 0.4.5 passes ``loop=`` to ``asyncio.Semaphore``, ``asyncio.sleep``, ``asyncio.wait`` and
``asyncio.wait_for``; Python 3.10 removed that parameter, so on Python 3.11 the unmodified library
fails with ``TypeError: ... unexpected keyword argument 'loop'`` whatever aiohttp version is installed
(the long-polling transport cannot even be constructed).

This shim gives aiocometd's own modules (and nothing else) a view of ``asyncio`` in which those four
names ignore ``loop=``. It changes no protocol behaviour: everything that goes on the wire is still
aiocometd 0.4.5's code. Import this module before using aiocometd.
"""
import asyncio
import functools
import sys
import types

import aiocometd  # noqa: F401  (loads the package and all its submodules)


def _drop_loop(func):
    @functools.wraps(func)
    def wrapper(*args, loop=None, **kwargs):  # pylint: disable=unused-argument
        return func(*args, **kwargs)
    return wrapper


class _Semaphore(asyncio.Semaphore):
    def __init__(self, value=1, *, loop=None):  # pylint: disable=unused-argument
        super().__init__(value)


_compat = types.ModuleType("asyncio")
_compat.__dict__.update(asyncio.__dict__)
_compat.sleep = _drop_loop(asyncio.sleep)
_compat.wait = _drop_loop(asyncio.wait)
_compat.wait_for = _drop_loop(asyncio.wait_for)
_compat.Semaphore = _Semaphore

PATCHED_MODULES = []
for _name, _module in list(sys.modules.items()):
    if (_name == "aiocometd" or _name.startswith("aiocometd.")) and \
            getattr(_module, "asyncio", None) is asyncio:
        _module.asyncio = _compat
        PATCHED_MODULES.append(_name)

if not PATCHED_MODULES:
    raise RuntimeError("aiocometd_compat: found no aiocometd module to patch")
