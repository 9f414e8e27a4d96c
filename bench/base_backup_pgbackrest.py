"""A physical base backup to the bucket, pgrunbook against pgBackRest, and the restore of each.

pgBackRest 2.45 (Debian's package: `apt-get install pgbackrest`) supports servers up to 15, so
both back up a PostgreSQL 15 cluster started here from /usr/lib/postgresql/15/bin (as the
`postgres` user, on a socket of its own) holding a pgbench database, into one SeaweedFS started
here (pgBackRest speaks only HTTPS to S3: SeaweedFS serves both, with a certificate made here).
Both compress with zstd and encrypt: pgBackRest with `compress-type=zst`, `repo1-cipher-type=
aes-256-cbc`, its default one process (and `--process-max 2` as a second line); pgrunbook with
its own (pg_basebackup, pg_verifybackup, then a tar of it in sealed parts, three uploads at once).

- backup: pgBackRest's `backup --type=full` (start-fast) against pgrunbook's
  `pitr.take_base_backup` into the repository (its record written last);
- restore: pgBackRest's `restore` into an empty folder against pgrunbook fetching the base
  backup from the bucket and checking it with pg_verifybackup (the files on disk, checked; the
  server is started by neither).

Runs alternate (which goes first rotates); medians are compared.

    python bench/base_backup_pgbackrest.py [--scale 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BIN = Path("/usr/lib/postgresql/15/bin")
KEY = "bench repository key " + uuid.uuid4().hex
CIPHER = "bench cipher pass " + uuid.uuid4().hex


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres() -> dict:
    entry = pwd.getpwnam("postgres")
    return {"user": entry.pw_uid, "group": entry.pw_gid} if os.geteuid() == 0 else {}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **_as_postgres(), **kw)
    if done.returncode != 0:
        said = done.stderr[-800:] or done.stdout[-800:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {said}")
    return done


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("pgbackrest") or not (BIN / "postgres").exists():
        sys.exit("needs pgbackrest 2.45 and PostgreSQL 15 (apt-get install pgbackrest)")
    from tests import s3

    root = Path(tempfile.mkdtemp(prefix="pgrb-pgbr-", dir="/tmp"))
    os.chmod(root, 0o755)
    pg = root / "pg"
    pg.mkdir()
    if os.geteuid() == 0:
        shutil.chown(pg, "postgres", "postgres")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout",
         str(root / "s3.key"), "-out", str(root / "s3.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    https = _free_port()
    weed = s3.SeaweedFS(root / "weed", extra=[
        f"-s3.port.https={https}", f"-s3.cert.file={root / 's3.crt'}",
        f"-s3.key.file={root / 's3.key'}",
    ])  # fmt: skip
    (root / "weed").mkdir()
    server = weed.start()
    port = _free_port()
    data = pg / "data"
    try:
        bucket = server.bucket(f"bench-{uuid.uuid4().hex[:8]}")
        env = server.env()
        conf = pg / "pgbackrest.conf"
        conf.write_text(
            f"[global]\nrepo1-type=s3\nrepo1-s3-endpoint=127.0.0.1\nrepo1-storage-port={https}\n"
            "repo1-s3-uri-style=path\nrepo1-storage-verify-tls=n\n"
            f"repo1-s3-bucket={bucket}\nrepo1-s3-region=us-east-1\n"
            f"repo1-s3-key={env['AWS_ACCESS_KEY_ID']}\n"
            f"repo1-s3-key-secret={env['AWS_SECRET_ACCESS_KEY']}\n"
            "repo1-path=/pgbackrest\nrepo1-cipher-type=aes-256-cbc\n"
            f"repo1-cipher-pass={CIPHER}\ncompress-type=zst\ncompress-level=3\nstart-fast=y\n"
            f"log-path={pg}\nlock-path={pg}\nspool-path={pg}\nlog-level-console=warn\n"
            f"[bench]\npg1-path={data}\npg1-socket-path={pg}\npg1-port={port}\n"
        )
        if os.geteuid() == 0:
            shutil.chown(conf, "postgres", "postgres")
        conf.chmod(0o600)
        brest = ["pgbackrest", f"--config={conf}", "--stanza=bench"]
        _run([str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync",
              "-E", "UTF8", "--locale=C"])  # fmt: skip
        archive = " ".join(brest) + " archive-push %p"
        options = (f"-k {pg} -p {port} -c listen_addresses= -c archive_mode=on "
                   f"-c wal_level=replica -c max_wal_senders=4")  # fmt: skip
        with (data / "postgresql.auto.conf").open("a") as f:
            f.write(f"archive_command = '{archive}'\n")
        _run([str(BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(pg / "log"), "-w",
              "start"])  # fmt: skip
        url = f"postgresql://postgres@/postgres?host={pg}&port={port}"
        _run([str(BIN / "pgbench"), "-i", "-q", "-s", str(args.scale), "-h", str(pg), "-p",
              str(port), "-U", "postgres", "postgres"])  # fmt: skip
        _run([*brest, "stanza-create"])

        os.environ.update(
            {
                **env,
                "PGRUNBOOK_REPOSITORY": f"s3://{bucket}/pgrunbook",
                "PGRUNBOOK_REPOSITORY_KEY": KEY,
                "PGRUNBOOK_PITR_DIR": str(root / "pitr"),
                "PGRUNBOOK_STATE_DIR": str(root / "state"),
            }  # fmt: skip
        )
        from pgrunbook.base.targets import Target
        from pgrunbook.procedures import pitr

        target = Target("bench", url)
        box = pitr.locate(target)
        size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
        theirs = _run(["pgbackrest", "version"]).stdout.split()[-1]
        print(f"PostgreSQL {box.version}, pgbench scale {args.scale}: {size / 2**20:.0f} MiB of "
              f"files; pgBackRest {theirs}")  # fmt: skip

        def ours_backup() -> None:
            taken = pitr.take_base_backup(target, box, label="bench")
            ours_backup.last = taken

        def theirs_backup(processes: int = 1) -> None:
            _run([*brest, "backup", "--type=full", f"--process-max={processes}"])

        def ours_restore() -> None:
            out = root / "restored-ours"
            shutil.rmtree(out, ignore_errors=True)
            box.archive.unpack(ours_backup.last, out)
            pitr.verify_base(box, out, name=ours_backup.last.id)
            shutil.rmtree(out)

        def theirs_restore(processes: int = 1) -> None:
            out = pg / "restored-theirs"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(mode=0o700)
            if os.geteuid() == 0:
                shutil.chown(out, "postgres", "postgres")
            _run([*brest, "restore", f"--pg1-path={out}", f"--process-max={processes}",
                  "--type=immediate", "--target-action=promote"])  # fmt: skip
            shutil.rmtree(out)

        ways = {
            "backup, pgrunbook": ours_backup,
            "backup, pgBackRest": theirs_backup,
            "backup, pgBackRest --process-max 2": lambda: theirs_backup(2),
            "restore, pgrunbook": ours_restore,
            "restore, pgBackRest": theirs_restore,
            "restore, pgBackRest --process-max 2": lambda: theirs_restore(2),
        }
        times: dict[str, list[float]] = {k: [] for k in ways}
        for r in range(args.repeat):
            for phase in ("backup", "restore"):
                names = [k for k in ways if k.startswith(phase)]
                names = names[r % len(names) :] + names[: r % len(names)]
                for name in names:
                    subprocess.run(["sync"], check=False)
                    times[name].append(_timed(ways[name]))
        stored = {"pgrunbook": 0, "pgBackRest": 0}
        client = server.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                who = "pgrunbook" if o["Key"].startswith("pgrunbook/pitr/") else "pgBackRest"
                if "/base/" in o["Key"] or "/backup/" in o["Key"]:
                    stored[who] += o["Size"]
        for name, xs in times.items():
            runs = ", ".join(f"{x:.2f}" for x in sorted(xs))
            print(f"{name:38} median {statistics.median(xs):6.2f} s (runs {runs})")
        for phase in ("backup", "restore"):
            ours = statistics.median(times[f"{phase}, pgrunbook"])
            for other in (f"{phase}, pgBackRest", f"{phase}, pgBackRest --process-max 2"):
                print(f"ratio {phase}: pgrunbook / {other.split(', ')[1]} = "
                      f"{ours / statistics.median(times[other]):.2f}x")  # fmt: skip
        ours_mib, theirs_mib = stored["pgrunbook"] / 2**20, stored["pgBackRest"] / 2**20
        print(f"stored in the bucket (all runs' base backups): pgrunbook {ours_mib:.0f} MiB, "
              f"pgBackRest {theirs_mib:.0f} MiB")  # fmt: skip
    finally:
        subprocess.run([str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, **_as_postgres())  # fmt: skip
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
