"""Builds the `ember` package: the hand-written client (ember/__init__.py) plus the gRPC modules
generated at build time from the repository's protos (ember/v1/*_pb2.py, *_pb2_grpc.py).

The protos are read from ../../proto (the repository's), or from $EMBER_PROTO_DIR. Nothing
generated is kept in git, so the client cannot drift from the protos the servers are built from.
"""

import glob
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithProtos(build_py):
    def run(self):
        super().run()
        from grpc_tools import protoc

        proto_dir = os.environ.get("EMBER_PROTO_DIR", os.path.join(HERE, "..", "..", "proto"))
        protos = sorted(glob.glob(os.path.join(proto_dir, "ember", "v1", "*.proto")))
        if not protos:
            raise SystemExit(f"no ember/v1/*.proto under {proto_dir} (set EMBER_PROTO_DIR)")
        include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        args = ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={self.build_lib}",
                f"--grpc_python_out={self.build_lib}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {protos}")
        # The generated modules import each other as `ember.v1.x_pb2`: make that a package.
        open(os.path.join(self.build_lib, "ember", "v1", "__init__.py"), "a").close()


setup(cmdclass={"build_py": BuildWithProtos})
