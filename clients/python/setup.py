"""Builds the package, generating its gRPC stubs from the repository's protos.

The protos live in the repository's `proto/`, two levels up. An sdist
carries a copy in `proto/` next to this file, so a build from the sdist (or
from a copy of this folder alone) finds them there first.

Generated modules (`tributary/v1/*_pb2.py`, `*_pb2_grpc.py`, `*.pyi`) are
written into the build tree only; they are never part of the source tree.
`google/api/*` is not generated: googleapis-common-protos provides it, and
generating it too would clash with that package's `google.api` modules.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
# The sdist's copy first, then the repository's.
PROTO_DIRS = [HERE / "proto", HERE.parent.parent / "proto"]
PROTOS = ["record", "ingest", "query", "fleet", "plugin", "coordinator"]


def proto_dir() -> Path:
    for candidate in PROTO_DIRS:
        if (candidate / "tributary" / "v1" / "record.proto").is_file():
            return candidate
    searched = ", ".join(str(p) for p in PROTO_DIRS)
    raise RuntimeError(f"the tributary protos were not found (looked in {searched})")


def generate(out: Path) -> None:
    """Runs protoc (from grpcio-tools) on the tributary protos into `out`."""
    import grpc_tools
    from grpc_tools import protoc

    source = proto_dir()
    # The well-known types (google/protobuf/*.proto) ship with grpcio-tools.
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    files = [f"tributary/v1/{name}.proto" for name in PROTOS]
    args = [
        "grpc_tools.protoc",
        f"-I{source}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {files} from {source}")


class BuildPy(build_py):
    """Generates the stubs into the build tree after copying the sources."""

    def run(self) -> None:
        super().run()
        generate(Path(self.build_lib))


class Sdist(sdist):
    """Carries the protos in the sdist, so that it builds on its own."""

    def make_release_tree(self, base_dir, files) -> None:
        super().make_release_tree(base_dir, files)
        shutil.copytree(proto_dir(), Path(base_dir) / "proto", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
