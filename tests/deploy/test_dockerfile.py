"""Static checks of the Dockerfile and .dockerignore (no Docker engine here):
the Dockerfile is parsed into stages and instructions and read like a reviewer
would."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field

import pytest

from deploy_helpers import DOCKERFILE, REPO

BUILD_COMMAND = "cargo build --release --locked"
RUNTIME_IMAGE = "gcr.io/distroless/cc-debian12:nonroot"
# An image reference pinned by digest: name[:tag]@sha256:<64 hex digits>.
PINNED = re.compile(r"(?P<name>[^@\s]+)@sha256:[0-9a-f]{64}")
# The OCI labels the image must carry (org.opencontainers.image.*), and the
# build ARG each one is set from, if any.
OCI_LABELS = {
    "title": None,
    "licenses": None,
    "version": "VERSION",
    "revision": "REVISION",
    "source": "SOURCE",
}


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined and
    comments dropped; FROM images have the global ARGs substituted."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append((pending + line).strip())
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            image = re.sub(
                r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), words[0]
            )
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=image, name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, got {keyword}"
            key, _, default = args.partition("=")
            global_args[key] = default.strip('"')
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def unpinned(image: str) -> str:
    """`name:tag@sha256:…` without its digest."""
    match = PINNED.fullmatch(image)
    assert match, f"{image} is not pinned by digest"
    return match.group("name")


def stage_named(stages: list[Stage], name: str) -> Stage:
    (stage,) = [s for s in stages if s.name == name]
    return stage


def run_commands(stages: list[Stage]) -> list[str]:
    return [" ".join(args.split()) for s in stages for args in s.args("RUN")]


def test_build_command_is_exactly_the_ci_one(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    builds = [c for c in run_commands(stages) if re.search(r"\bcargo\s+build\b", c)]
    assert builds == [BUILD_COMMAND]


def test_cargo_chef_caches_dependencies(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    planner, builder = stage_named(stages, "planner"), stage_named(stages, "builder")
    assert planner.image == "chef" and builder.image == "chef"
    assert any(
        re.fullmatch(r"cargo chef prepare --recipe-path recipe\.json", " ".join(a.split()))
        for a in planner.args("RUN")
    )
    steps = [(kw, " ".join(a.split())) for kw, a in builder.instructions]
    recipe = steps.index(("COPY", "--from=planner /app/recipe.json recipe.json"))
    cook = next(i for i, (kw, a) in enumerate(steps) if kw == "RUN" and a.startswith("cargo chef cook"))
    sources = steps.index(("COPY", ". ."))
    build = steps.index(("RUN", BUILD_COMMAND))
    # recipe in, dependencies cooked, only then the sources, then the build
    assert recipe < cook < sources < build
    cook_args = steps[cook][1].split()
    assert "--release" in cook_args and "--locked" in cook_args


def test_chef_stage_pins_rust_to_a_minor_on_bookworm(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    global_args, stages = dockerfile
    chef = stage_named(stages, "chef")
    image = unpinned(chef.image)
    # bookworm = Debian 12, the same glibc as the distroless runtime
    assert re.fullmatch(r"rust:1\.\d+-bookworm", image), image
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    minimum = tuple(int(x) for x in cargo["package"]["rust-version"].split(".")[:2])
    pinned = tuple(int(x) for x in image.split(":")[1].split("-")[0].split("."))
    assert pinned >= minimum
    installs = [c for c in run_commands([chef]) if "cargo install cargo-chef" in c]
    assert len(installs) == 1 and "--locked" in installs[0] and "--version" in installs[0]
    assert re.fullmatch(r"\d+\.\d+\.\d+", global_args["CARGO_CHEF_VERSION"])


def test_runtime_is_distroless_nonroot(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    assert unpinned(final.image) == RUNTIME_IMAGE
    assert final.args("USER") == ["65532:65532"]


def test_final_stage_exposes_grpc_and_metrics(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    exposed = {port for args in stages[-1].args("EXPOSE") for port in args.split()}
    assert {"50051", "9090"} <= {p.split("/")[0] for p in exposed}


def test_final_stage_has_no_run_and_no_shell(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    keywords = [kw for kw, _ in final.instructions]
    assert "RUN" not in keywords
    assert "SHELL" not in keywords
    assert "HEALTHCHECK" not in keywords  # would need a shell or a client binary
    # exec form: no /bin/sh -c wrapper (distroless has no shell)
    (entrypoint,) = final.args("ENTRYPOINT")
    assert entrypoint.startswith("[")
    for kw in ("CMD",):
        for args in final.args(kw):
            assert args.startswith("["), f"{kw} in shell form needs a shell"


def test_entrypoint_is_the_built_binary(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    (binary,) = [b["name"] for b in cargo["bin"] if b["name"] == cargo["package"]["default-run"]]
    copies = [shlex.split(a) for a in final.args("COPY")]
    assert copies == [["--from=builder", f"/app/target/release/{binary}", f"/usr/local/bin/{binary}"]]
    assert json.loads(final.args("ENTRYPOINT")[0]) == [f"/usr/local/bin/{binary}"]


def test_no_apt_and_no_protoc_install(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    # protoc comes from the protoc-bin-vendored crate; gcc is in the rust image.
    _, stages = dockerfile
    for command in run_commands(stages):
        assert not re.search(r"\b(apt-get|apt|apk|dnf|yum)\b", command), command
        assert "protoc" not in command, command


# --- .dockerignore ---------------------------------------------------------------


def _pattern_regex(pattern: str) -> str:
    """Docker's .dockerignore pattern syntax (Go filepath.Match plus `**`)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def ignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins, `!` re-includes, and a
    pattern matching a directory excludes everything under it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            result = not negate
    return result


def test_ignore_matcher_is_live() -> None:
    assert ignored(["target"], "target/release/x")
    assert not ignored(["target"], "src/target.rs")
    assert ignored(["**/node_modules"], "a/b/node_modules/c")
    assert not ignored(["*.md", "!README.md"], "README.md")


@pytest.fixture(scope="module")
def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        "target/release/datalayer",
        "node_modules/@bufbuild/buf/package.json",
        ".venv/bin/python",
        ".git/HEAD",
        "clients/typescript/node_modules/x/index.js",
        "clients/python/src/__pycache__/x.pyc",
    ],
)
def test_dockerignore_excludes_local_artifacts(dockerignore: list[str], path: str) -> None:
    assert ignored(dockerignore, path)


@pytest.mark.parametrize(
    "path",
    [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "src/main.rs",
        "src/lib.rs",
        "src/store/redis/lua/prelude.lua",
        "proto/datalayer/ratelimit/v1/ratelimit.proto",
    ],
)
def test_dockerignore_keeps_what_the_build_needs(dockerignore: list[str], path: str) -> None:
    assert (REPO / path).exists(), path
    assert not ignored(dockerignore, path)


# --- supply chain: pinned bases, OCI labels ---------------------------------------


def test_every_base_image_is_pinned_by_digest(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    # A FROM names either an earlier stage or an image; every image is pinned
    # by digest, so a rebuild cannot pick up different layers silently.
    _, stages = dockerfile
    names: set[str] = set()
    images = []
    for stage in stages:
        if stage.image not in names:
            images.append(stage.image)
        if stage.name:
            names.add(stage.name)
    assert len(images) == 2, images  # the Rust builder and the runtime
    for image in images:
        assert "$" not in image, f"unresolved build argument in FROM {image}"
        assert PINNED.fullmatch(image), f"FROM {image} is not pinned by @sha256: digest"


def test_digest_check_is_live() -> None:
    _, stages = parse("ARG BASE=debian:12\nFROM ${BASE} AS a\nFROM a\n")
    assert stages[0].image == "debian:12" and not PINNED.fullmatch(stages[0].image)
    assert stages[1].image == "a"  # a stage reference, not an image
    assert PINNED.fullmatch("debian:12@sha256:" + "0" * 64)
    assert not PINNED.fullmatch("debian:12@sha256:" + "0" * 63)


def _labels(stage: Stage) -> dict[str, str]:
    labels: dict[str, str] = {}
    for args in stage.args("LABEL"):
        for word in shlex.split(args):
            key, sep, value = word.partition("=")
            assert sep, f"LABEL {word!r} is not key=value"
            labels[key] = value
    return labels


def test_final_stage_carries_the_oci_labels(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    global_args, stages = dockerfile
    final = stages[-1]
    labels = _labels(final)
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]
    # ARGs declared before the first FROM are visible in a stage only once
    # it declares them again.
    declared = {a.split("=")[0] for a in final.args("ARG")}
    for name, arg in OCI_LABELS.items():
        key = f"org.opencontainers.image.{name}"
        assert key in labels, f"LABEL {key} is missing"
        if arg is not None:
            assert labels[key] == f"${{{arg}}}", f"{key} is not set from ARG {arg}"
            assert arg in global_args, f"ARG {arg} has no global default"
            assert arg in declared, f"the runtime stage does not declare ARG {arg}"
    assert labels["org.opencontainers.image.title"] == cargo["name"]
    assert labels["org.opencontainers.image.licenses"] == cargo["license"]
    # `docker build .` with no build args still labels the right version.
    assert global_args["VERSION"] == cargo["version"]
