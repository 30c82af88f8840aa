# -*- coding: utf-8 -*-
"""The controller's half of bgd_release (the module is library/bgd_release.py).

1. Walks the build on the controller.
2. Runs the module in its `inspect` phase: the host's copy of the build, and
   whether the build recorded for it is the one live.
3. If the copy matches and is live: ok, nothing else runs.
4. Otherwise packs the files the host lacks (with the whole tree's list) into
   one tar, sends it, and runs the module's `apply` phase: sync, then
   `bgctl release`.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import tarfile
import tempfile

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase


def _module_code():
    """library/bgd_release.py, for its walk(): one description of a tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(os.path.dirname(here), "library", "bgd_release.py")
    spec = importlib.util.spec_from_file_location("bgd_release_module", path)
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    return code


class ActionModule(ActionBase):
    TRANSFERS_FILES = True
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        try:
            return self._run(result, task_vars or {})
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)

    def _run(self, result, task_vars):
        args = dict(self._task.args)
        src = args.get("src")
        if not src:
            raise AnsibleActionFail("src is required: the build directory on the controller")
        src = os.path.abspath(os.path.expanduser(src))
        if not os.path.isdir(src):
            raise AnsibleActionFail("src %s is not a directory on the controller" % src)
        args["src"] = src
        code = _module_code()
        try:
            manifest = code.walk(src)
        except (code.TreeError, OSError) as e:
            raise AnsibleActionFail("cannot read the build %s: %s" % (src, e))

        seen = self._module(args, task_vars, _phase="inspect")
        if seen.get("failed"):
            result.update(seen)
            return result
        have = code.entry_map(seen["entries"])
        in_sync = seen["entries"] == manifest
        if in_sync and seen["already_live"]:
            result.update(
                changed=False,
                msg="already live: release %s (fingerprint %s)" % (seen.get("release"), seen.get("fingerprint")),
                released=False,
                release=seen.get("release"),
                fingerprint=seen.get("fingerprint"),
                synced=code.empty_sync(),
            )
            return result
        if self._task.check_mode:
            result.update(changed=True, msg="would sync and release", released=False, synced=code.empty_sync())
            return result

        extra = {}
        if not in_sync:
            send = [e for e in manifest if e[1] == "f" and code.needs_content(e, have.get(e[0]))]
            remote = self._connection._shell.join_path(self._connection._shell.tmpdir, "build.tar.gz")
            local = self._pack(src, manifest, send)
            try:
                self._transfer_file(local, remote)
            finally:
                os.unlink(local)
            self._fixup_perms2((self._connection._shell.tmpdir, remote))
            extra = dict(_archive=remote)
        result.update(self._module(args, task_vars, _phase="apply", **extra))
        return result

    def _module(self, args, task_vars, **internal):
        module_args = dict(args)
        module_args.update(internal)
        return self._execute_module(
            module_name="bgd_release", module_args=module_args, task_vars=task_vars
        )

    @staticmethod
    def _pack(src, manifest, send):
        """One tar: manifest.json (the whole tree's list), then the files to
        send as files/PATH. gzip level 1: the network is usually faster than
        a stronger compression."""
        fd, path = tempfile.mkstemp(prefix="bgd_release.", suffix=".tar.gz")
        os.close(fd)
        listing = json.dumps(manifest).encode("utf-8", "surrogateescape")
        with tarfile.open(path, "w:gz", compresslevel=1) as tar:
            info = tarfile.TarInfo("manifest.json")
            info.size = len(listing)
            tar.addfile(info, io.BytesIO(listing))
            for e in send:
                tar.add(os.path.join(src, e[0]), arcname="files/" + e[0], recursive=False)
        return path
