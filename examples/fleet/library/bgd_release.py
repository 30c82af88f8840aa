#!/usr/bin/python3
# -*- coding: utf-8 -*-
"""bgd_release: sync a build to a host and release it through bgd.

The module runs on the host; its action plugin (action_plugins/bgd_release.py,
beside this directory) runs on the controller, reads the build there and sends
the files the host lacks. The action plugin imports this file for walk() and
entry_map(), so both sides describe a tree the same way.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bgd_release
short_description: Release a build to a host through bgd, the blue-green process supervisor
description:
  - Copies the build directory O(src) from the controller into O(stage_dir) on the host, or, when
    the host already holds an earlier build there, sends only the files whose contents differ
    (compared by SHA-256, not by size and time alone) and removes the ones the build no longer has.
    Modes and modification times are kept, so the host's copy is the same tree.
  - Then runs C(bgctl release) on O(stage_dir), which stages the build into bgd's dormant color,
    starts it, waits until it is ready and makes it live; the old color keeps serving if any step fails.
  - Idempotent. After a release it records, beside O(stage_dir), bgd's own fingerprint of the
    build it copied and a digest of O(stage_dir) (contents included). When O(stage_dir) still has that digest and
    C(bgctl status --json) shows that fingerprint on the live color, the build is already live, and
    the module reports V(ok) and releases nothing. The module never computes bgd's fingerprint itself.
  - A build released by other means (C(bgctl) by hand) is not recognised as live the first time;
    the module releases it once and is idempotent from then on.
  - Needs its action plugin (C(action_plugins/bgd_release.py) next to C(library/)) to read the build
    on the controller; ansible finds both beside the playbook. The playbook C(examples/fleet/release.yml)
    and docs/operations.md, "Releasing to several hosts", show it at work.
version_added: "0.1.0"
author:
  - bgd developers
options:
  src:
    description:
      - The build directory, on the controller. Its contents (not the directory itself) are synced
        into O(stage_dir).
      - Regular files, directories and symlinks only; bgd refuses FIFOs, sockets and devices.
    type: path
    required: true
  stage_dir:
    description:
      - Where the build is kept on the host, for bgd to copy from. The module owns it, and removes
        from it the files the build does not have.
      - The record of the last release is kept beside it, in C(.NAME.bgd_release.json).
    type: path
    required: true
  socket:
    description:
      - bgd's control socket on the host (C(bgctl --socket)).
    type: path
    required: true
  bgctl:
    description:
      - bgctl's path on the host.
    type: str
    default: bgctl
  label:
    description:
      - The release's label, shown by C(bgctl status) and C(bgctl history).
    type: str
  wait_bake:
    description:
      - Pass C(--wait-bake) to C(bgctl release), so that the task ends only when bgd's bake window has
        passed. If bgd rolls the build back during the bake (bgctl exits 8), the task fails and the
        previous build serves again.
      - Meant for a bgd configured with C([traffic] bake); without a bake window the task ends at once.
    type: bool
    default: false
  canary:
    description:
      - Release as a canary with C(bgctl release --canary PERCENT) (1 to 99); once it is ready, the new
        build gets this share of new connections beside the live one, and the task ends. C(bgctl promote)
        makes it live, C(bgctl abort) drains it.
      - With O(wait_bake) too, the task ends only once the canary has been promoted and has passed its
        bake, so it needs C([traffic] steps) in bgd's config (which promote the canary by themselves), or a
        C(bgctl promote) from elsewhere. The playbook instead promotes the canary after its verify step and
        then waits for the bake through C(bgctl status).
    type: int
notes:
  - Check mode reports whether the build would be synced or released, and changes nothing.
  - >-
    On failure RV(rc) is bgctl's exit code (1 the new build failed to start or become ready,
    3 bgd cannot be reached, 4 bgd is busy with another release, 5 bad request, 6 staging failed,
    7 bgd failed internally, 8 rolled back during the bake), and with any of them the host's
    previous build still serves.
"""

EXAMPLES = r"""
- name: Release the build on this host
  bgd_release:
    src: "{{ build }}"
    stage_dir: /srv/app/stage
    socket: /var/lib/bgd/app/bgd.sock
    label: "{{ label }}"

- name: Release as a 10% canary and wait for the bake window
  bgd_release:
    src: ./dist
    stage_dir: /srv/app/stage
    socket: /var/lib/bgd/app/bgd.sock
    bgctl: /usr/bin/bgctl
    canary: 10
    wait_bake: true
  register: released

- name: Say what went live
  ansible.builtin.debug:
    msg: "{{ released.msg }}"
"""

RETURN = r"""
msg:
  description: bgctl's summary (C(release 7 is live on green (190 ms))), that the build was already
    live, or bgctl's message on failure.
  returned: always
  type: str
  sample: release 7 is live on green (190 ms)
released:
  description: Whether bgctl release ran and succeeded.
  returned: always
  type: bool
release:
  description: The release id bgd gave the build (the live one, if nothing was released).
  returned: when known
  type: int
  sample: 7
fingerprint:
  description: bgd's fingerprint of the live build.
  returned: when known
  type: str
  sample: 3f1c0e8a9b2d4c61
synced:
  description: What the sync did to O(stage_dir).
  returned: always
  type: dict
  contains:
    sent:
      description: Files sent from the controller.
      type: int
    bytes:
      description: Bytes sent, before compression.
      type: int
    removed:
      description: Entries removed because the build no longer has them.
      type: int
    updated:
      description: Entries created or whose mode, modification time or target changed.
      type: int
rc:
  description: bgctl's exit code, when bgctl ran.
  returned: when bgctl ran
  type: int
  sample: 1
stdout:
  description: What bgctl printed on stdout.
  returned: when bgctl ran
  type: str
stderr:
  description: What bgctl printed on stderr (its progress, and on failure its message and the new
    build's last output).
  returned: when bgctl ran
  type: str
cmd:
  description: The bgctl command line that ran last.
  returned: when bgctl ran
  type: list
  elements: str
"""

import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile

from ansible.module_utils.basic import AnsibleModule

# bgctl's exit code when the bake window rolled the build back.
EXIT_ROLLED_BACK = 8


class TreeError(Exception):
    """A tree holds something that cannot be synced or released."""


def walk(root):
    """The tree under root as a sorted list of entries
    [path, kind, mode, size, mtime_ns, link target, sha256]; kind is d, f or
    l. The root itself is left out, as bgd's fingerprint leaves it out. A
    missing root is an empty tree.

    Files are compared by content too, not only by size and time: two builds
    checked out by git in the same clock tick can have files of the same
    size and the same mtime, to the nanosecond, and different contents."""
    entries = []
    if not os.path.isdir(root):
        return entries

    def visit(dir_path, rel):
        with os.scandir(dir_path) as it:
            names = sorted(it, key=lambda e: e.name)
        for e in names:
            path = os.path.join(dir_path, e.name)
            child = e.name if not rel else rel + "/" + e.name
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                entries.append([child, "l", 0, 0, st.st_mtime_ns, os.readlink(path), None])
            elif stat.S_ISDIR(st.st_mode):
                entries.append([child, "d", stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, None, None])
                visit(path, child)
            elif stat.S_ISREG(st.st_mode):
                entries.append(
                    [child, "f", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, None, sha256(path)]
                )
            else:
                raise TreeError(
                    "%s is neither a file, a directory nor a symlink; bgd refuses FIFOs, sockets and devices"
                    % path
                )

    visit(root, "")
    return entries


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def entry_map(entries):
    return {e[0]: e for e in entries}


def digest(entries):
    """A digest of a tree's entries, to tell later whether it changed."""
    return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode("utf-8", "surrogateescape")).hexdigest()


def needs_content(want, have):
    """Whether file entry `want` must be sent, given the host's entry `have`."""
    return have is None or have[1] != "f" or have[3] != want[3] or have[6] != want[6]


def record_path(stage_dir):
    """Where the last release from stage_dir is recorded: beside it, not in it."""
    stage_dir = stage_dir.rstrip("/") or "/"
    return os.path.join(os.path.dirname(stage_dir), "." + os.path.basename(stage_dir) + ".bgd_release.json")


def load_record(stage_dir, socket):
    try:
        with open(record_path(stage_dir)) as f:
            return json.load(f).get(socket)
    except (OSError, ValueError, AttributeError):
        return None


def save_record(stage_dir, socket, record):
    path = record_path(stage_dir)
    try:
        with open(path) as f:
            records = json.load(f)
        if not isinstance(records, dict):
            records = {}
    except (OSError, ValueError):
        records = {}
    records[socket] = record
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".bgd_release.")
    with os.fdopen(fd, "w") as f:
        json.dump(records, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Bgctl:
    """Runs bgctl against one bgd and keeps what the last run printed."""

    def __init__(self, module, path, socket):
        self.module = module
        self.base = [path, "--socket", socket]
        self.last = {}

    def run(self, *args):
        cmd = self.base + list(args)
        env = {"NO_COLOR": "1"}
        rc, out, err = self.module.run_command(cmd, environ_update=env)
        self.last = {"cmd": cmd, "rc": rc, "stdout": out, "stderr": err}
        return rc, out, err

    def message(self, err):
        """bgctl's own message: from its first line that is not a progress line."""
        lines = err.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("bgctl: ") and not line.startswith("bgctl: ["):
                return "\n".join([line[len("bgctl: "):]] + lines[i + 1:]).strip()
        return err.strip() or "bgctl failed with no message"

    def status(self):
        rc, out, err = self.run("status", "--json")
        if rc != 0:
            self.module.fail_json(msg="bgctl status failed: " + self.message(err), **self.failed())
        try:
            return json.loads(out)
        except ValueError as e:
            self.module.fail_json(msg="bgctl status --json printed no JSON: %s" % e, **self.failed())

    def failed(self):
        return dict(self.last, released=False, synced=empty_sync())


def live_build(status):
    """(release id, fingerprint) of the live color, or (None, None)."""
    color = status.get("live")
    if color not in ("blue", "green"):
        return None, None
    c = status.get(color) or {}
    return c.get("release"), c.get("fingerprint")


def already_live(record, tree_digest, status):
    release, fingerprint = live_build(status)
    return (
        record is not None
        and fingerprint is not None
        and record.get("digest") == tree_digest
        and record.get("fingerprint") == fingerprint
    )


def empty_sync():
    return {"sent": 0, "bytes": 0, "removed": 0, "updated": 0}


def writable(directory):
    """Lets the owner write into `directory` (a build may have read-only
    directories); the final pass puts its mode back."""
    st = os.stat(directory)
    if not st.st_mode & stat.S_IWUSR:
        os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)


def sync(stage_dir, manifest, tar):
    """Makes stage_dir hold exactly the tree `manifest` describes, taking file
    contents from the open tar file `tar` (members files/PATH). Returns counts."""
    want = entry_map(manifest)
    have = entry_map(walk(stage_dir))
    done = empty_sync()
    updated = set()  # entries created, or whose mode, time or target changed
    if not os.path.isdir(stage_dir):
        os.makedirs(stage_dir, mode=0o755)
    # Remove what the build does not have, children before their parents.
    for path in sorted(have, reverse=True):
        w, h = want.get(path), have[path]
        if w is not None and w[1] == h[1]:
            continue
        full = os.path.join(stage_dir, path)
        if os.path.lexists(full):  # else it went with a directory removed before it
            writable(os.path.dirname(full))
            if h[1] == "d":
                shutil.rmtree(full)
            else:
                os.unlink(full)
        del have[path]
        done["removed"] += 1
    for path in sorted(want):
        w, h = want[path], have.get(path)
        full = os.path.join(stage_dir, path)
        if h is None or h[1] != "d":
            writable(os.path.dirname(full))
        if w[1] == "d":
            if h is None:
                os.mkdir(full, 0o700)  # its mode is set once its contents are in place
                updated.add(path)
        elif w[1] == "l":
            if h is None or h[5] != w[5]:
                if h is not None:
                    os.unlink(full)
                os.symlink(w[5], full)
                updated.add(path)
        elif needs_content(w, h):
            try:
                member = tar.extractfile("files/" + path) if tar else None
            except KeyError:
                member = None
            if member is None:
                raise TreeError("the archive lacks %s: did the host's copy change while the build was sent?" % path)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(full), prefix=".bgd-sync-")
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(member, out)
            os.chmod(tmp, w[2])
            os.replace(tmp, full)
            done["sent"] += 1
            done["bytes"] += w[3]
        elif h[2] != w[2]:
            os.chmod(full, w[2])
            updated.add(path)
    # Modes of directories and modification times last: creating and
    # removing entries changes their directory's time, so directories go
    # deepest first.
    for path in sorted(want, reverse=True):
        w, h = want[path], have.get(path)
        full = os.path.join(stage_dir, path)
        st = os.lstat(full)
        touched = False
        if w[1] == "d" and stat.S_IMODE(st.st_mode) != w[2]:
            os.chmod(full, w[2])
            touched = h is not None and h[2] != w[2]
        if st.st_mtime_ns != w[4]:
            os.utime(full, ns=(w[4], w[4]), follow_symlinks=False)
            touched = touched or (h is not None and h[4] != w[4])
        if touched and not (w[1] == "f" and needs_content(w, h)):
            updated.add(path)
    done["updated"] = len(updated)
    after = walk(stage_dir)
    if after != manifest:
        odd = sorted({e[0] for e in map(tuple, after)} ^ {e[0] for e in map(tuple, manifest)})
        odd = odd or sorted(a[0] for a, m in zip(after, manifest) if a != m)
        raise TreeError(
            "%s does not match the build after the sync (did something change it meanwhile?): %s"
            % (stage_dir, ", ".join(odd[:3]))
        )
    return done


def run_module():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path", required=True),
            stage_dir=dict(type="path", required=True),
            socket=dict(type="path", required=True),
            bgctl=dict(type="str", default="bgctl"),
            label=dict(type="str"),
            wait_bake=dict(type="bool", default=False),
            canary=dict(type="int"),
            # Set by the action plugin, not by a task.
            _phase=dict(type="str", choices=["inspect", "apply"]),
            _archive=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["_phase"] is None:
        module.fail_json(
            msg="bgd_release reads the build on the controller through its action plugin: put "
            "action_plugins/bgd_release.py beside the library/ directory that holds this module"
        )
    if p["canary"] is not None and not 1 <= p["canary"] <= 99:
        module.fail_json(msg="canary is a share of new connections in percent: 1 to 99, not %d" % p["canary"])
    stage_dir = os.path.abspath(p["stage_dir"])
    bgctl = Bgctl(module, p["bgctl"], p["socket"])
    try:
        if p["_phase"] == "inspect":
            inspect(module, bgctl, stage_dir)
        apply(module, bgctl, stage_dir)
    except (TreeError, OSError, tarfile.TarError) as e:
        module.fail_json(msg="cannot sync the build into %s: %s" % (stage_dir, e), released=False, synced=empty_sync())


def inspect(module, bgctl, stage_dir):
    """What the controller needs to decide: the host's tree, and whether the
    build recorded for it is live."""
    entries = walk(stage_dir)
    status = bgctl.status()
    release, fingerprint = live_build(status)
    record = load_record(stage_dir, module.params["socket"])
    module.exit_json(
        changed=False,
        entries=entries,
        already_live=already_live(record, digest(entries), status),
        release=release,
        fingerprint=fingerprint,
    )


def apply(module, bgctl, stage_dir):
    p = module.params
    if module.check_mode:
        module.exit_json(changed=True, msg="would sync and release", released=False, synced=empty_sync())
    synced = empty_sync()
    if p["_archive"]:
        # The whole tree's list (manifest.json) and the files the host lacks (files/PATH).
        with tarfile.open(p["_archive"], "r:*") as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
            synced = sync(stage_dir, manifest, tar)
    entries = walk(stage_dir)
    tree_digest = digest(entries)
    status = bgctl.status()
    release, fingerprint = live_build(status)
    touched = any(synced.values())
    if already_live(load_record(stage_dir, p["socket"]), tree_digest, status):
        module.exit_json(
            changed=touched,
            msg="already live: release %s (fingerprint %s)" % (release, fingerprint),
            released=False,
            release=release,
            fingerprint=fingerprint,
            synced=synced,
        )
    args = ["release", stage_dir]
    if p["label"] is not None:
        args += ["--label", p["label"]]
    if p["wait_bake"]:
        args.append("--wait-bake")
    if p["canary"] is not None:
        args += ["--canary", str(p["canary"])]
    rc, out, err = bgctl.run(*args)
    ran = dict(bgctl.last)
    if rc != 0:
        msg = bgctl.message(err)
        if rc == EXIT_ROLLED_BACK:
            msg = "rolled back automatically during the bake: " + msg
        module.fail_json(msg=msg, released=False, synced=synced, **ran)
    # The build just released: the color staged from stage_dir with the
    # highest release id (live, or a canary).
    status = bgctl.status()
    mine = [
        status.get(c) or {}
        for c in ("blue", "green")
        if (status.get(c) or {}).get("source") == stage_dir and (status.get(c) or {}).get("release") is not None
    ]
    mine = max(mine, key=lambda c: c["release"]) if mine else {}
    new_id, fingerprint = mine.get("release"), mine.get("fingerprint")
    if not fingerprint:
        module.warn(
            "bgctl status shows no fingerprint for the new build (a bgd older than this module?): "
            "the next run cannot tell that it is live and releases it again"
        )
    else:
        save_record(
            stage_dir,
            p["socket"],
            {"digest": tree_digest, "fingerprint": fingerprint, "release": new_id, "label": p["label"]},
        )
    summary = out.strip().splitlines()
    module.exit_json(
        changed=True,
        msg=summary[-1] if summary else "released",
        released=True,
        release=new_id,
        fingerprint=fingerprint,
        synced=synced,
        **ran
    )


def main():
    run_module()


if __name__ == "__main__":
    main()
