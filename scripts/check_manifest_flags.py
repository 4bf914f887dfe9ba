#!/usr/bin/env python3
"""Runs every command line the rendered manifests give the `ember` binary, with `--check-config`.

For each container of each workload (and each exec probe), the argument list is rebuilt the way
the kubelet builds it: `$(VAR)` references are expanded from the container's `env` and the
ConfigMaps its `envFrom` names (values as rendered, hash suffixes included), and the container's
environment is passed to the process, nothing else. Secrets cannot be rendered, so the files a
container mounts from a Secret are made here in a temporary directory (a real CA, certificate and
key for the name ember.internal, a real role-token file and tokens), and paths under a Secret's
mountPath are pointed there: `--check-config` then loads them exactly as a start would.

Usage: check_manifest_flags.py EMBER_BINARY RENDERED.yaml...
Exit 1, naming the object, the container and the binary's message, when any command is refused.
With --self-test, also checks that a bad value in a manifest is caught and named.
"""

import datetime
import os
import re
import subprocess
import sys
import tempfile

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
TOKENS = {role: f"{role}-token-{'x' * 24}" for role in ("admin", "worker", "serving", "reader")}


def make_secrets():
    """The Secrets the overlays expect (docs/deploy.md): name -> key -> file contents."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def pem_key(key):
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ember test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ember.internal")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("ember.internal")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tokens = dict(TOKENS)
    tokens["auth-tokens"] = "".join(f"{role} {token}\n" for role, token in TOKENS.items())
    secrets = {
        "ember-tls": {
            "ca.crt": ca.public_bytes(serialization.Encoding.PEM).decode(),
            "tls.crt": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "tls.key": pem_key(key).decode(),
        },
        "ember-tokens": tokens,
    }
    return secrets


def expand(text, env):
    """The kubelet's $(VAR) expansion: known names are replaced, $$ escapes, unknown stay."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


class Checker:
    def __init__(self, ember, docs, root):
        self.ember = ember
        self.root = root
        self.secrets = make_secrets()
        self.configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d and d["kind"] == "ConfigMap"}
        self.failures = []
        self.checked = 0

    def secret_dirs(self, obj_name, pod, container):
        """mountPath -> a directory holding the Secret's files as the pod would see them."""
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        dirs = {}
        for mount in container.get("volumeMounts", []):
            secret = volumes.get(mount["name"], {}).get("secret")
            if secret is None:
                continue
            name = secret["secretName"]
            if name not in self.secrets:
                raise LookupError(f"{obj_name}: Secret {name} is not one docs/deploy.md tells operators to create")
            data = self.secrets[name]
            items = secret.get("items") or [{"key": k, "path": k} for k in data]
            target = tempfile.mkdtemp(prefix=f"{name}-", dir=self.root)
            for item in items:
                if item["key"] not in data:
                    raise LookupError(f"{obj_name}: Secret {name} has no key {item['key']} (it has {sorted(data)})")
                with open(os.path.join(target, item["path"]), "w") as f:
                    f.write(data[item["key"]])
            dirs[mount["mountPath"].rstrip("/")] = target
        return dirs

    def environment(self, obj_name, container, dirs):
        env = {}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref is not None:
                if ref["name"] not in self.configmaps:
                    raise LookupError(f"{obj_name}: envFrom names ConfigMap {ref['name']}, which is not rendered")
                env.update(self.configmaps[ref["name"]])
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
            elif "fieldRef" in var.get("valueFrom", {}):
                env[var["name"]] = f"{obj_name}-0"
        for name, value in env.items():
            for mount, target in dirs.items():
                if value == mount or value.startswith(mount + "/"):
                    env[name] = target + value[len(mount):]
        return env

    def run(self, what, argv, env):
        self.checked += 1
        proc = subprocess.run([self.ember, *argv, "--check-config"], env={"PATH": os.environ.get("PATH", ""), **env},
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            message = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            self.failures.append(f"{what}: ember {' '.join(argv)}: {message[0] if message else proc.returncode}")
        else:
            print(f"ok  {what}: {proc.stdout.strip()}")

    def check(self, doc):
        kind, name = doc["kind"], doc["metadata"]["name"]
        pod = doc["spec"]["template"]["spec"]
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            what = f"{kind}/{name} container {container['name']}"
            dirs = self.secret_dirs(f"{kind}/{name}", pod, container)
            env = self.environment(name, container, dirs)
            command = [expand(a, env) for a in container.get("command", []) + container.get("args", [])]
            self.run(what, command, env)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                exec_ = container.get(probe, {}).get("exec")
                if exec_ is not None:
                    argv = [expand(a, env) for a in exec_["command"]]
                    if not argv[0].endswith("/ember"):
                        self.failures.append(f"{what} {probe}: runs {argv[0]}, not the image's ember binary")
                        continue
                    self.run(f"{what} {probe}", argv[1:], env)


def check_files(ember, paths):
    failures, checked = [], 0
    with tempfile.TemporaryDirectory() as root:
        for path in paths:
            with open(path) as f:
                docs = [d for d in yaml.safe_load_all(f) if d]
            checker = Checker(ember, docs, root)
            for doc in docs:
                if doc["kind"] in WORKLOADS:
                    try:
                        checker.check(doc)
                    except LookupError as e:
                        checker.failures.append(str(e))
            failures += [f"{os.path.basename(path)}: {f}" for f in checker.failures]
            checked += checker.checked
    return failures, checked


def self_test(ember, path):
    """A value the binary rejects, put into a copy of a rendered overlay, must fail by name."""
    with open(path) as f:
        text = f.read()
    bad = re.sub(r"EMBER_PS_DRAM_BUDGET: \S+", "EMBER_PS_DRAM_BUDGET: 12 gigs", text, count=1)
    assert bad != text, "the self-test needs EMBER_PS_DRAM_BUDGET in the ConfigMap"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(bad)
    try:
        failures, _ = check_files(ember, [f.name])
    finally:
        os.unlink(f.name)
    named = [x for x in failures if "StatefulSet/ember-ps" in x and "--dram-budget" in x]
    if not named:
        return [f"self-test: a bad --dram-budget in {path} was not caught by name (got {failures})"]
    print(f"self-test ok: a bad value is refused by name: {named[0]}")
    return []


def main():
    args = [a for a in sys.argv[1:] if a != "--self-test"]
    if len(args) < 2:
        sys.exit(__doc__)
    ember, paths = args[0], args[1:]
    failures, checked = check_files(ember, paths)
    if "--self-test" in sys.argv:
        failures += self_test(ember, paths[0])
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"{checked} command lines checked, {len(failures)} refused")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
