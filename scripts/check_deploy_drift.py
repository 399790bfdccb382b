#!/usr/bin/env python3
"""Drift check between the deployment artefacts and the binaries.

Every APOLLO_* variable and every flag that a rendered Kubernetes overlay or
docker-compose.yml hands to an APOLLO binary must be one that binary lists in
its `--help`; gRPC and metrics ports must agree with the addresses the
container is configured with and with the binary's `--grpc-addr` default;
a variable set in a ConfigMap shared by several binaries must have the same
help text (meaning) in each of them.

usage: check_deploy_drift.py BIN_DIR RENDERED.yaml... --compose docker-compose.yml
Exits 1 with one line per problem.
"""

import re
import subprocess
import sys
from pathlib import Path

import yaml

BINARIES = {
    "apollo-ingest",
    "apollo-forecaster",
    "apollo-scheduling",
    "apollo-orchestration",
    "apolloctl",
}


class Help:
    """What one binary (or subcommand) accepts, read from its --help."""

    def __init__(self, text):
        self.envs = set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", text))
        self.flags = set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", text))
        self.defaults = {}
        # Help text of each variable, without its default: a variable shared
        # through one ConfigMap must mean the same thing in every binary.
        self.meaning = {}
        blocks = {}
        flag = None
        for line in text.splitlines():
            m = re.match(r"\s+(?:-\w, )?(--[a-z0-9-]+)", line)
            if m:
                flag = m.group(1)
                line = line[m.end() :]
            d = re.search(r"\[default: ([^\]]+)\]", line)
            if d and flag:
                self.defaults.setdefault(flag, d.group(1).strip())
            if flag:
                blocks.setdefault(flag, []).append(line)
        for lines in blocks.values():
            block = " ".join(lines)
            env = re.search(r"\[env: ([A-Z0-9_]+)", block)
            if env:
                words = re.sub(r"\[(env|default|possible values): [^\]]*\]|<[A-Z_]+>", " ", block)
                self.meaning[env.group(1)] = " ".join(words.split())


_help_cache = {}


def help_for(bin_dir, argv):
    """`--help` of the binary and subcommand named by argv (None if not APOLLO's)."""
    if not argv or Path(argv[0]).name not in BINARIES:
        return None
    words = [Path(argv[0]).name]
    if words[0] == "apolloctl":
        words += [a for a in argv[1:2] if not a.startswith("-")]
    key = tuple(words)
    if key not in _help_cache:
        out = subprocess.run(
            [str(Path(bin_dir) / words[0]), *words[1:], "--help"],
            capture_output=True,
            text=True,
            check=True,
        )
        _help_cache[key] = Help(out.stdout)
    return _help_cache[key]


def port_of(addr):
    m = re.search(r":(\d+)$", str(addr))
    return int(m.group(1)) if m else None


def check_container(where, h, argv, env, ports, probe_ports, problems):
    """One container / compose service: env names, flags, ports."""
    for name in sorted(env):
        if name.startswith("APOLLO_") and name not in h.envs:
            problems.append(f"{where}: {name} is not an environment variable of `{' '.join(argv[:2])}`")
    for arg in argv[1:]:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and flag not in h.flags:
            problems.append(f"{where}: flag {flag} is not accepted by `{argv[0]}`")
    grpc = port_of(env.get("APOLLO_GRPC_ADDR") or h.defaults.get("--grpc-addr", ""))
    metrics = port_of(env.get("APOLLO_METRICS_ADDR") or h.defaults.get("--metrics-addr", ""))
    default_grpc = port_of(h.defaults.get("--grpc-addr", ""))
    if "--grpc-addr" in h.flags and grpc != default_grpc:
        problems.append(f"{where}: gRPC port {grpc} differs from the binary's default {default_grpc}")
    for name, port in ports.items():
        want = {"grpc": grpc, "metrics": metrics}.get(name)
        if want is not None and port != want:
            problems.append(f"{where}: port '{name}' is {port} but the binary listens on {want}")
    for probe, port in probe_ports:
        if port not in (grpc, metrics):
            problems.append(f"{where}: {probe} probes port {port}, which the binary does not serve")


def check_manifests(bin_dir, path, problems):
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    shared = {}
    for d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        for c in spec.get("containers", []):
            argv = list(c.get("command", [])) + list(c.get("args", []))
            where = f"{Path(path).name}: {d['kind']}/{d['metadata']['name']} container {c['name']}"
            h = help_for(bin_dir, argv)
            if h is None:
                continue
            env = {}
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef", {}).get("name")
                if ref is not None:
                    if ref not in configmaps:
                        problems.append(f"{where}: envFrom ConfigMap {ref} is not in the overlay")
                    env.update(configmaps.get(ref, {}))
            for e in c.get("env", []):
                env[e["name"]] = e.get("value", "<from secret/field>")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            probes = []
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(kind) or {}
                for how in ("grpc", "httpGet", "tcpSocket"):
                    if how in p:
                        port = p[how]["port"]
                        probes.append((kind, ports.get(port, port) if isinstance(port, str) else port))
            check_container(where, h, argv, env, ports, probes, problems)
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef", {}).get("name")
                for key in configmaps.get(ref, {}):
                    if key in h.meaning:
                        shared.setdefault((ref, key), {})[argv[0]] = h.meaning[key]
    for (ref, key), meanings in sorted(shared.items()):
        if len(set(meanings.values())) > 1:
            detail = "; ".join(f"{b}: {m!r}" for b, m in sorted(meanings.items()))
            problems.append(f"{Path(path).name}: ConfigMap {ref} sets {key}, which means different things: {detail}")


def check_compose(bin_dir, path, problems):
    doc = yaml.safe_load(Path(path).read_text())
    for name, svc in doc.get("services", {}).items():
        argv = svc.get("command") or []
        if isinstance(argv, str):
            argv = argv.split()
        h = help_for(bin_dir, argv)
        where = f"{Path(path).name}: service {name}"
        if h is None:
            continue
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict((e.split("=", 1) + [None])[:2] for e in env)
        ports = {}
        for p in svc.get("ports", []):
            container = int(str(p).rsplit(":", 1)[-1])
            if container == port_of(env.get("APOLLO_GRPC_ADDR", "")):
                ports["grpc"] = container
            elif container == port_of(env.get("APOLLO_METRICS_ADDR", "")):
                ports["metrics"] = container
            else:
                problems.append(f"{where}: published port {container} is neither its gRPC nor its metrics address")
        probes = []
        test = " ".join((svc.get("healthcheck") or {}).get("test", []))
        for port in re.findall(r"127\.0\.0\.1:(\d+)", test):
            probes.append(("healthcheck", int(port)))
        check_container(where, h, argv, env, ports, probes, problems)


def main():
    args = sys.argv[1:]
    compose = None
    if "--compose" in args:
        i = args.index("--compose")
        compose = args[i + 1]
        del args[i : i + 2]
    if len(args) < 2:
        sys.exit(__doc__)
    bin_dir, rendered = args[0], args[1:]
    problems = []
    for path in rendered:
        check_manifests(bin_dir, path, problems)
    if compose:
        check_compose(bin_dir, compose, problems)
    for p in problems:
        print(f"drift: {p}", file=sys.stderr)
    checked = ", ".join(" ".join(k) for k in sorted(_help_cache))
    if problems:
        sys.exit(1)
    print(f"ok -- no drift against the --help of {checked}")


if __name__ == "__main__":
    main()
