"""cpp/ as a CMake package: installed and consumed with find_package(subtune), and built against an
ONNX Runtime of one's own (-DONNXRUNTIME_ROOT=..., or find_package(onnxruntime) through a package
config) with no build type forced and no RPATH into a cache folder.

The installed programs are run on the compiled graph and compared with Python's ONNX Runtime, as
the in-tree build is in test_cpp.py. The "ONNX Runtime of one's own" folders are laid out from the
same pieces the SDK is made of (the onnxruntime wheel's library; the headers and CMake package
configs of Debian's libonnxruntime-dev and nlohmann-json3-dev, whose .deb files get_sdk.sh keeps),
and get_sdk.sh is made unable to run there (an empty SDK folder, an unreachable mirror), so a build
that fell back to it would fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.cpp.conftest import COARSE, FASHION, ROOT, SIZE, ninja_generator, python_images, run, sdk_dir

BUILD_TIMEOUT_S = 600
TOL = 1e-5


def _step(cmd, env=None) -> subprocess.CompletedProcess:
    r = run(cmd, env=env, timeout=BUILD_TIMEOUT_S)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def _runpaths(path: Path) -> list[str]:
    """The RUNPATH/RPATH entries of an ELF file (readelf -d)."""
    r = run(["readelf", "-d", path])
    assert r.returncode == 0, r.stderr
    found = []
    for line in r.stdout.splitlines():
        if "(RUNPATH)" in line or "(RPATH)" in line:
            found += line.split("[", 1)[1].rstrip("]").split(":")
    return [p for p in found if p]


def _loaded_from(program: Path, library: str, env: dict) -> Path:
    """The file the loader resolves `library` to for `program` (ldd), its symlinks resolved."""
    r = run(["ldd", program], env=env)
    for line in r.stdout.splitlines():
        name, _, rest = line.strip().partition(" => ")
        if name == library:
            assert not rest.startswith("not found"), f"{program}: {library} not found\n{r.stdout}"
            return Path(rest.split(" (")[0]).resolve()
    raise AssertionError(f"{program} does not need {library}:\n{r.stdout}")


def _elf_files(prefix: Path) -> list[Path]:
    return [p for p in sorted(prefix.rglob("*")) if p.is_file() and not p.is_symlink()
            and p.read_bytes()[:4] == b"\x7fELF" and "onnxruntime" not in p.name]


def _isolated_env(tmp_path: Path, cxx_env: dict) -> dict:
    """get_sdk.sh cannot provide anything here: an empty SDK folder and an unreachable mirror."""
    env = {k: v for k, v in cxx_env.items() if k not in ("ONNXRUNTIME_ROOT", "CMAKE_PREFIX_PATH")}
    return dict(env, SUBTUNE_SDK_DIR=str(tmp_path / "no-sdk"), SUBTUNE_DEBIAN_MIRROR="http://127.0.0.1:9/debian")


def _classify_lines(images, python_session) -> list[str]:
    """What docs/cpp.md's example prints: each image's best class per task, from Python's ONNX Runtime."""
    x = python_images(images[0].parent)
    reference = dict(zip([o.name for o in python_session.get_outputs()], python_session.run(None, {"images": x})))
    return [f"{path} {name}: {classes[int(np.argmax(reference[name][i]))]}"
            for i, path in enumerate(images) for name, classes in (("fashion10", FASHION), ("coarse4", COARSE))]


def _check_infer_matches_python(infer: Path, graph: Path, images, python_session, tmp_path: Path, env=None):
    out = tmp_path / "infer.json"
    r = run([infer, graph, "--image", *images, "--threads", 1, "--json", out], env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    x = python_images(images[0].parent)
    for name, ref in zip([o.name for o in python_session.get_outputs()], python_session.run(None, {"images": x})):
        got = np.array([img["outputs"][name]["logits"] for img in result["images"]], dtype=np.float32)
        err = float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
        assert err <= TOL, f"{name}: relative error {err:.2e} > {TOL}"


def _build_consumer(prefix_path: str, build: Path, env: dict, *extra: str) -> Path:
    """cpp/examples/consumer (docs/cpp.md's example) configured with find_package(subtune) against an
    installed prefix, as C++14: subtune::subtune must bring C++17 (target_compile_features PUBLIC)."""
    _step(["cmake", "-S", ROOT / "cpp" / "examples" / "consumer", "-B", build, f"-DCMAKE_PREFIX_PATH={prefix_path}",
           "-DCMAKE_CXX_STANDARD=14", *extra, *ninja_generator(build)], env=env)
    _step(["cmake", "--build", build, "-j", "2"], env=env)
    return build / "classify"


def _unpack_deb(name: str, into: Path) -> None:
    debs = sorted((sdk_dir() / "apt" / "debs").glob(f"{name}_*.deb"))
    if not debs or shutil.which("dpkg-deb") is None:
        pytest.skip(f"no {name} .deb in {sdk_dir() / 'apt' / 'debs'} (or no dpkg-deb): the SDK was not made by "
                    "get_sdk.sh, so the 'ONNX Runtime of your own' folders cannot be laid out here")
    _step(["dpkg-deb", "-x", debs[0], into])


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _wheel_library() -> Path:
    libs = sorted((sdk_dir() / "lib").glob("libonnxruntime.so.1.*"))
    assert libs, f"no libonnxruntime.so.1.* in {sdk_dir() / 'lib'}"
    return libs[0]


@pytest.fixture(scope="module")
def json_prefix(tmp_path_factory) -> Path:
    """nlohmann/json installed with its CMake package config (Debian's nlohmann-json3-dev), as a prefix."""
    root = tmp_path_factory.mktemp("json")
    _unpack_deb("nlohmann-json3-dev", root)
    return root / "usr"


# --- The installed package and a consumer --------------------------------------------------------------

def test_installed_package_builds_a_consumer_with_find_package(cpp_build, cpp_graph, cpp_images, python_session,
                                                               tmp_path):
    """The test build (ONNX Runtime from get_sdk.sh, a static libsubtune) installed to a prefix: ONNX
    Runtime's library is installed beside libsubtune, nothing installed has an RPATH into the SDK's
    cache folder, the installed subtune-infer matches Python, and a C++14 project builds docs/cpp.md's
    example with find_package(subtune 0.1) -> subtune::subtune and names Python's best classes."""
    prefix = tmp_path / "prefix"
    _step(["cmake", "--install", cpp_build.build_dir, "--prefix", prefix], env=cpp_build.env)
    libdir = next(d for d in (prefix / "lib", prefix / "lib64") if d.is_dir())
    assert (libdir / "libonnxruntime.so.1").is_file()
    assert (libdir / "cmake" / "subtune" / "subtuneConfigVersion.cmake").is_file()
    installed = _elf_files(prefix)
    assert prefix / "bin" / "subtune-infer" in installed
    cache = str(sdk_dir().resolve())
    for path in installed:
        for entry in _runpaths(path):
            assert cache not in entry and "/.cache/" not in entry, f"{path} has RUNPATH {entry}"
    assert "$ORIGIN/../lib" in _runpaths(prefix / "bin" / "subtune-infer") or libdir.name != "lib"

    # The installed program finds ONNX Runtime beside it (OpenVINO, where built, the usual way).
    env = dict(cpp_build.env)
    env.pop("LD_LIBRARY_PATH", None)
    if "openvino" in cpp_build.runtimes:
        import openvino

        env["LD_LIBRARY_PATH"] = str(Path(openvino.__file__).parent / "libs")
    loaded = _loaded_from(prefix / "bin" / "subtune-infer", "libonnxruntime.so.1", env)
    assert loaded == (libdir / "libonnxruntime.so.1").resolve(), loaded
    _check_infer_matches_python(prefix / "bin" / "subtune-infer", cpp_graph, cpp_images, python_session, tmp_path,
                                env=env)

    classify = _build_consumer(str(prefix), tmp_path / "consumer", cpp_build.env, "-DCMAKE_BUILD_TYPE=Release")
    r = run([classify, cpp_graph, *cpp_images])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == _classify_lines(cpp_images, python_session)


# --- An ONNX Runtime of one's own --------------------------------------------------------------------

@pytest.fixture(scope="module")
def ort_release(tmp_path_factory) -> Path:
    """A folder laid out as ONNX Runtime's release archive (onnxruntime-linux-x64-*.tgz): include/*.h,
    lib/libonnxruntime.so -> .so.1 -> .so.1.x.y; its library is the onnxruntime wheel's."""
    root = tmp_path_factory.mktemp("ort") / "onnxruntime-linux-x64"
    (root / "include").mkdir(parents=True)
    for header in (sdk_dir() / "include" / "onnxruntime").glob("*.h"):
        shutil.copy2(header, root / "include" / header.name)
    wheel = _wheel_library()
    _link_or_copy(wheel, root / "lib" / wheel.name)
    (root / "lib" / "libonnxruntime.so.1").symlink_to(wheel.name)
    (root / "lib" / "libonnxruntime.so").symlink_to("libonnxruntime.so.1")
    return root


def test_onnxruntime_root_no_build_type_shared_library(cpp_build, cpp_graph, cpp_images, python_session,
                                                       ort_release, json_prefix, tmp_path):
    """-DONNXRUNTIME_ROOT=<a release folder>, nlohmann/json from its package config, BUILD_SHARED_LIBS=ON
    and no CMAKE_BUILD_TYPE: configure uses that folder and never get_sdk.sh, leaves the build type
    empty, links the folder's library; the installed tree holds no copy of ONNX Runtime and no RPATH,
    and no RPATH but subtune-infer's to its own lib folder, and runs (LD_LIBRARY_PATH=<release>/lib)
    with Python's outputs; a consumer builds against it."""
    env = _isolated_env(tmp_path, cpp_build.env)
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    r = _step(["cmake", "-S", ROOT / "cpp", "-B", build, f"-DONNXRUNTIME_ROOT={ort_release}",
               f"-DCMAKE_PREFIX_PATH={json_prefix}", "-DBUILD_SHARED_LIBS=ON", "-DSUBTUNE_WITH_OPENVINO=OFF",
               "-DSUBTUNE_BUILD_TESTS=OFF", "-DSUBTUNE_BUILD_EXAMPLES=OFF", *ninja_generator(build)], env=env)
    assert f"ONNX Runtime: ONNXRUNTIME_ROOT ({ort_release})" in r.stdout, r.stdout
    assert "subtune SDK" not in r.stdout and not (tmp_path / "no-sdk").exists()
    cache = (build / "CMakeCache.txt").read_text()
    assert "CMAKE_BUILD_TYPE:STRING=\n" in cache, "a build type was forced"
    _step(["cmake", "--build", build, "-j", "2"], env=env)
    _step(["cmake", "--install", build, "--prefix", prefix], env=env)

    libdir = next(d for d in (prefix / "lib", prefix / "lib64") if d.is_dir())
    assert not list(libdir.glob("libonnxruntime*")), "ONNX Runtime of one's own must stay where it is"
    assert list(libdir.glob("libsubtune.so*"))
    for path in _elf_files(prefix):
        expected = ["$ORIGIN/../lib"] if path.name == "subtune-infer" and libdir.name == "lib" else []
        assert _runpaths(path) == expected, f"{path} has RUNPATH {_runpaths(path)}"
    run_env = dict(env, LD_LIBRARY_PATH=str(ort_release / "lib"))
    loaded = _loaded_from(prefix / "bin" / "subtune-infer", "libonnxruntime.so.1", run_env)
    assert loaded == (ort_release / "lib" / "libonnxruntime.so.1").resolve(), loaded
    _check_infer_matches_python(prefix / "bin" / "subtune-infer", cpp_graph, cpp_images, python_session, tmp_path,
                                env=run_env)

    # A shared libsubtune consumed with find_package (linking needs no LD_LIBRARY_PATH; running
    # finds ONNX Runtime of one's own the documented way).
    classify = _build_consumer(str(prefix), tmp_path / "consumer", env)
    r = run([classify, cpp_graph, *cpp_images], env=run_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == _classify_lines(cpp_images, python_session)


@pytest.fixture(scope="module")
def ort_debian_prefix(tmp_path_factory) -> Path:
    """A prefix as Debian's libonnxruntime-dev and nlohmann-json3-dev install them (headers and their
    CMake package configs), with ONNX Runtime's library where that config expects it (the wheel's,
    under the file name the config names)."""
    root = tmp_path_factory.mktemp("debian")
    _unpack_deb("libonnxruntime-dev", root)
    _unpack_deb("nlohmann-json3-dev", root)
    targets = next((root / "usr" / "lib").glob("*/cmake/onnxruntime/onnxruntimeTargets-*.cmake"))
    location = next(line for line in targets.read_text().splitlines() if "IMPORTED_LOCATION" in line)
    library = root / "usr" / location.split('"')[1].replace("${_IMPORT_PREFIX}/", "")
    _link_or_copy(_wheel_library(), library)
    return root / "usr"


def test_onnxruntime_from_find_package(cpp_build, ort_debian_prefix, tmp_path):
    """With onnxruntime's package config on CMAKE_PREFIX_PATH, find_package(onnxruntime) provides
    onnxruntime::onnxruntime: configure says so, never runs get_sdk.sh, and the programs link that
    package's library (configure only: the build itself is the ONNXRUNTIME_ROOT test's)."""
    env = _isolated_env(tmp_path, cpp_build.env)
    build = tmp_path / "build"
    r = _step(["cmake", "-S", ROOT / "cpp", "-B", build, f"-DCMAKE_PREFIX_PATH={ort_debian_prefix}",
               "-DSUBTUNE_WITH_OPENVINO=OFF", "-DCMAKE_BUILD_TYPE=Release", *ninja_generator(build)], env=env)
    assert "ONNX Runtime: package onnxruntime" in r.stdout, r.stdout
    assert "subtune SDK" not in r.stdout and not (tmp_path / "no-sdk").exists()
    link_rules = "".join(p.read_text() for p in [build / "build.ninja", *build.rglob("link.txt")] if p.is_file())
    library = next((ort_debian_prefix / "lib").glob("*/libonnxruntime.so.1.*"))
    assert str(library) in link_rules, f"the programs do not link {library}"
