#!/usr/bin/env python3
"""Roll a plugin out to gateway replicas one at a time.

    scripts/rolling-reload.py PLUGIN.wasm ADMIN_URL=PLUGIN_DIR [ADMIN_URL=PLUGIN_DIR ...]

For each replica in turn: the file is copied into its plugin folder (under
a temporary name, then renamed, so the replica never reads half a file),
the replica reloads on its own when it sees the change, and the script
waits until the replica's /admin/plugins reports the file's SHA-256. Only
then does it move to the next replica.

A replica that refuses the file (not a component, a pin that does not
match, a `configure` that fails) keeps serving its old version; the script
puts the old file back in that replica's folder, so a restart loads what is
running, and stops: the replicas after it are not touched. It exits 1 and
says why.

The plugin folders must be reachable as paths here (a shared mount, or run
the script once per host). `--config FILE` copies a gateway.toml along with
the plugin, for a filter that pins the plugin's hash with `sha256 = "..."`:
the plugin goes first (refused while the old pin stands), then the config.
GATEWAY_ADMIN_TOKEN, if set, is sent with the reload request that follows
each copy.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request


def admin_get(url, path):
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=5) as r:
        return json.load(r)


def admin_reload(url):
    """Asks for a reload now rather than waiting for the file watcher;
    either way the replica reloads once. A refusal is read from
    /admin/plugins below, like a reload the watcher made."""
    req = urllib.request.Request(url.rstrip("/") + "/admin/reload", method="POST", data=b"")
    token = os.environ.get("GATEWAY_ADMIN_TOKEN")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
        try:
            return json.loads(body)
        except ValueError:
            return {"result": "failure", "error": "HTTP %d: %s" % (e.code, body.strip())}


def plugin_entry(described, name):
    for p in described.get("plugins", []):
        if p.get("name") == name:
            return p
    return None


def place(src, folder, name):
    """Copies src to folder/name through a temporary file and a rename."""
    tmp = os.path.join(folder, ".%s.rollout" % name)
    shutil.copyfile(src, tmp)
    os.replace(tmp, os.path.join(folder, name))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plugin", help="the new plugin file; its name (NAME.wasm) names the plugin")
    ap.add_argument("replicas", nargs="+", metavar="ADMIN_URL=PLUGIN_DIR")
    ap.add_argument("--config", help="a gateway.toml to copy next to each replica's current one (see above)")
    ap.add_argument("--config-path", help="where --config goes on each replica, relative to PLUGIN_DIR", default="../gateway.toml")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds each replica may take (default 60)")
    args = ap.parse_args()

    with open(args.plugin, "rb") as f:
        content = f.read()
    want = hashlib.sha256(content).hexdigest()
    file_name = os.path.basename(args.plugin)
    name = file_name[:-5] if file_name.endswith(".wasm") else file_name
    print("rolling %s (sha256 %s) to %d replica(s)" % (name, want, len(args.replicas)))

    for n, replica in enumerate(args.replicas, 1):
        url, sep, folder = replica.partition("=")
        if not sep:
            sys.exit("%s: write each replica as ADMIN_URL=PLUGIN_DIR" % replica)
        before = plugin_entry(admin_get(url, "/admin/plugins"), name)
        if before and before.get("sha256") == want:
            print("[%d/%d] %s already runs it" % (n, len(args.replicas), url))
            continue
        target = os.path.join(folder, file_name)
        backup = None
        if os.path.exists(target):
            backup = os.path.join(folder, ".%s.previous" % file_name)
            shutil.copyfile(target, backup)
        place(args.plugin, folder, file_name)
        if args.config:
            config_target = os.path.normpath(os.path.join(folder, args.config_path))
            shutil.copyfile(args.config, config_target + ".rollout")
            os.replace(config_target + ".rollout", config_target)
        outcome = admin_reload(url)
        deadline = time.monotonic() + args.timeout
        while True:
            entry = plugin_entry(admin_get(url, "/admin/plugins"), name)
            if entry and entry.get("sha256") == want:
                break
            if outcome.get("result") == "failure" or time.monotonic() > deadline:
                why = outcome.get("error") or "no reload reported %s within %gs" % (want[:12], args.timeout)
                if backup:
                    os.replace(backup, target)
                else:
                    os.remove(target)
                print("[%d/%d] %s refused it and serves its old version: %s" % (n, len(args.replicas), url, why), file=sys.stderr)
                print("stopped: replicas after %s were not touched" % url, file=sys.stderr)
                return 1
            time.sleep(0.1)
            outcome = {}
        if backup:
            os.remove(backup)
        print("[%d/%d] %s now runs %s %s" % (n, len(args.replicas), url, name, want[:12]))
    print("done: every replica runs %s" % want[:12])
    return 0


if __name__ == "__main__":
    sys.exit(main())
