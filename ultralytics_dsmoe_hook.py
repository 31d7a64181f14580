"""Autoload hook for ultralytics-dsmoe: stdlib only, executed at interpreter start by ``ultralytics_dsmoe.pth``.

It costs one tiny import per Python start and nothing else: the plugin itself is imported only right after
``ultralytics.nn`` (or ``ultralytics.cfg``, which the ``yolo`` CLI reads ``cfg=`` files with before it loads any
model) has finished executing, so ``python -c pass`` never pays for torch or Ultralytics, while the ``yolo`` CLI,
``from ultralytics import YOLO`` and DDP worker subprocesses all see the DS-MoE blocks and shipped file names.

Environment:
    ULTRALYTICS_DSMOE_AUTOLOAD=0  disables the hook (then ``import ultralytics_dsmoe`` explicitly).
    YOLO_OFFLINE                  left as it is, with one exception: unset, and the machine cannot resolve the hosts
                                  Ultralytics' own import-time probe asks for within ``PROBE_SECONDS``, it is set to 1
                                  before Ultralytics loads. Ultralytics would reach the same verdict, but its probe has
                                  no time limit (a dead resolver can stall every import for many seconds), so on a
                                  machine with network nothing changes, and without one nothing stalls.
"""

import os
import sys

AUTOLOAD_ENV = "ULTRALYTICS_DSMOE_AUTOLOAD"
# Ultralytics' import-time probe (ultralytics.utils.is_online): the first of these that resolves means online.
PROBE_HOSTS = ("one.one.one.one", "dns.google")
PROBE_SECONDS = 1.0


class _PostImportFinder:
    """A meta-path finder that runs callbacks around the first import of selected modules.

    It never loads anything itself: it asks the remaining finders for the spec and wraps the loader's
    ``exec_module`` so callbacks run before/after the module body executes.
    """

    def __init__(self):
        self.before, self.after = {}, {}  # module name -> [callback(module or None)]

    def find_spec(self, name, path=None, target=None):
        if name not in self.before and name not in self.after:
            return None
        for cb in self.before.pop(name, []):
            cb(None)
        after = self.after.pop(name, [])
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        if spec is None or not after or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module  # loaders are per-module: patch this instance only

        def exec_then_notify(module):
            exec_module(module)
            for cb in after:
                cb(module)

        spec.loader.exec_module = exec_then_notify
        return spec


_FINDER = _PostImportFinder()


def _finder():
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    return _FINDER


def when_imported(name, callback):
    """Call ``callback(module)`` once ``name`` has finished importing (now, if it already has)."""
    module = sys.modules.get(name)
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        callback(module)
    else:
        _finder().after.setdefault(name, []).append(callback)


def before_import(name, callback):
    """Call ``callback(None)`` right before ``name`` is first imported (never, if it already was)."""
    if name not in sys.modules:
        _finder().before.setdefault(name, []).append(callback)


def resolves(hosts=PROBE_HOSTS, seconds=PROBE_SECONDS) -> bool:
    """True if any of ``hosts`` resolves within ``seconds`` (one daemon thread per lookup, so a hung resolver is left
    behind instead of waited for)."""
    import queue  # here, not at the top: the hook runs at every interpreter start and must stay cheap there
    import socket
    import threading
    import time

    answers = queue.SimpleQueue()

    def lookup(host):
        try:
            socket.getaddrinfo(host.encode(), 0, socket.AF_UNSPEC, 0, 0, socket.AI_ADDRCONFIG)  # bytes: no idna import
            answers.put(True)
        except OSError:
            answers.put(False)

    for host in hosts:
        threading.Thread(target=lookup, args=(host,), daemon=True).start()
    end = time.monotonic() + seconds
    for _ in hosts:
        try:
            if answers.get(timeout=max(0.0, end - time.monotonic())):
                return True
        except queue.Empty:  # out of time
            return False
    return False


def _offline_without_network(_):
    """Before Ultralytics loads: YOLO_OFFLINE=1 only when the user left it unset and there is no network."""
    if "YOLO_OFFLINE" not in os.environ and not resolves():
        os.environ["YOLO_OFFLINE"] = "1"


def _import_plugin(_):
    __import__("ultralytics_dsmoe")


def autoload():
    """Entry point of the ``.pth`` line: arm the hooks unless disabled by the environment."""
    if os.environ.get(AUTOLOAD_ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return
    before_import("ultralytics", _offline_without_network)
    when_imported("ultralytics.nn", _import_plugin)
    when_imported("ultralytics.cfg", _import_plugin)  # `yolo ... cfg=paper-recipe.yaml` resolves the shipped file
