"""Publishing a large bundle over REST: the portal's memory and throughput (issue 3).

Usage (from the repository root; needs PostgreSQL on 127.0.0.1:5432)::

    .venv/bin/python bench/publish_throughput.py [--size-mb 500] [--repeat 3] \
        [--docs docs/benchmarks.md]

What one run does:

1. makes a valid app bundle whose payload is ``--size-mb`` MiB of random (incompressible)
   bytes, packed by ``aimms_portal.packages.pack_app``, and a tiny runtime package
   signed with a fresh Ed25519 key;
2. starts moto's S3 server on a free loopback port, with one bucket;
3. per storage backend (S3 on moto, a local folder): creates a throwaway PostgreSQL
   database with an admin and an API token, and starts ONE server process the way the
   portal runs in production: Granian (what Reflex 0.10 picks when gunicorn is absent),
   ASGI, one worker, serving the portal's REST API (``create_api()``). Through that API
   it trusts the key and uploads the runtime, as a publisher would;
4. ``--repeat`` times, in turn: the reference transfer of the same file (boto3's
   ``upload_file`` to the same moto endpoint; for the local folder ``shutil.copyfile``
   plus ``fsync``, since the portal's local storage syncs what it stores: only for
   orientation, as issue 3 sets local storage no throughput target), then the
   portal's publish: ``PortalClient.publish_bundle`` streams the file with its
   ``Content-Length``, the portal stores and validates it and answers with the release.
   While it runs, the RSS of the server's process tree is sampled every 10 ms; the peak
   minus the RSS just before the request is the growth. The release is deleted again
   after each run (its stored bundle with it);
5. prints a markdown table (medians) with the verdicts against issue 3's targets: RSS
   growth at most 64 MB (both storages, worst run), throughput at least 70 % of
   boto3's (S3); with ``--docs`` also writes it into that file;
6. stops the servers, empties and deletes the bucket, stops moto, drops the databases
   and removes every temporary file, also after an error, Ctrl-C or SIGTERM.

Client, servers, moto and PostgreSQL share the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `python bench/publish_throughput.py` from anywhere

from bench.api_throughput import (  # noqa: E402  (needs the path above)
    free_port,
    machine,
    throwaway_database,
)

MiB = 1024 * 1024
MB = 1_000_000
SERVER_START_TIMEOUT = 60.0
RSS_INTERVAL = 0.01
RSS_TARGET_MB = 64
SHARE_TARGET = 0.70
APP_NAME = "bench-app"
RUNTIME_NAME = "bench-runtime"
DOCS_BEGIN = "<!-- publish_throughput: begin (written by bench/publish_throughput.py) -->"
DOCS_END = "<!-- publish_throughput: end -->"

#: Fake credentials: moto accepts any, and boto3 must never look for real ones.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost,::1",
    "no_proxy": "127.0.0.1,localhost,::1",
}
#: Loopback only: never through a proxy, whatever the environment says.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- files to publish ------------------------------------------------------------------


def make_bundle(folder: Path, size_mib: int) -> Path:
    """A valid bundle of ``bench-app 1.0`` with ``size_mib`` MiB of random bytes in it."""
    from aimms_portal.packages import pack_app

    source = folder / "app"
    source.mkdir()
    manifest = {
        "format": 1,
        "name": APP_NAME,
        "version": "1.0",
        "title": "Benchmark app",
        "description": "A bundle whose payload cannot be compressed.",
        "runtime": {"name": RUNTIME_NAME, "version": ">=1.0"},
        "procedures": {"solve": {"command": ["python", "solve.py"]}},
    }
    (source / "app.json").write_text(json.dumps(manifest))
    (source / "solve.py").write_text("print('solved')\n")
    with open(source / "payload.bin", "wb") as payload:
        for _ in range(size_mib):
            payload.write(os.urandom(MiB))
    bundle = folder / "bench-app-1.0.zip"
    pack_app(source, bundle)
    shutil.rmtree(source)
    return bundle


def make_runtime(folder: Path) -> tuple[Path, bytes, str]:
    """A signed runtime package without wheels: (package, .sig bytes, public key text)."""
    from aimms_portal.packages import build_runtime, generate_signing_key, sign_file

    source = folder / "runtime"
    source.mkdir()
    manifest = {"format": 1, "name": RUNTIME_NAME, "version": "1.0", "python": ">=3.11"}
    (source / "runtime.json").write_text(json.dumps(manifest))
    package = folder / "bench-runtime-1.0.zip"
    build_runtime(source, package)
    private_pem, public_text = generate_signing_key()
    return package, sign_file(private_pem, package).to_json(), public_text


# -- moto ------------------------------------------------------------------------------


def _stop_group(process: subprocess.Popen[bytes], name: str, sig: int = signal.SIGINT) -> None:
    """Stop a server started in its own process group: ``sig``, then SIGKILL the group."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            # the leader is alive, so the group is surely still ours
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    print(f"stopped {name} pid {process.pid}", file=sys.stderr)


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields its endpoint; stopped on exit."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **FAKE_AWS_ENV},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto exited with {process.returncode}:\n{log.read_text()}")
            try:
                with _DIRECT.open(f"{endpoint}/moto-api/", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # any HTTP answer means it is up
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not answer:\n{log.read_text()}") from None
                time.sleep(0.1)
        print(f"moto pid {process.pid} on {endpoint}", file=sys.stderr)
        yield endpoint
    finally:
        _stop_group(process, "moto", signal.SIGTERM)


def s3_client(endpoint: str) -> Any:
    """A plain boto3 client of ``endpoint``; the fake credentials come from the environment."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@contextmanager
def bucket_on(endpoint: str) -> Iterator[str]:
    """A new bucket; emptied (unfinished multipart uploads too) and deleted on exit."""
    client = s3_client(endpoint)
    name = f"bench-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)
        print(f"deleted bucket {name}", file=sys.stderr)


# -- the portal ------------------------------------------------------------------------


def seed(database_url: str) -> str:
    """An admin with an API token (read, write, admin) in the database; returns the token."""
    from aimms_portal.config import get_settings
    from aimms_portal.db import reset_engine, session_scope
    from aimms_portal.models import Role
    from aimms_portal.services import accounts, tokens

    os.environ["AIMMS_PORTAL_DATABASE_URL"] = database_url
    get_settings.cache_clear()
    reset_engine()
    with session_scope() as session:
        accounts.ensure_builtin_groups(session)
        admin = accounts.create_user(
            session, actor=None, username="bench-admin", password=None, role=Role.admin.value
        )
        _, token = tokens.create_token(
            session,
            actor=admin,
            name="bench",
            scopes=["read", "write", "admin"],
            expires_in_days=1,
        )
    reset_engine()  # the server has its own pool; this process keeps no connection open
    return token


def serve(port: int) -> None:
    """Serve the portal's REST API like Reflex serves the portal in production (blocks)."""
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server import Server

    Server(
        target="aimms_portal.api.app:create_api",
        factory=True,
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        log_level=LogLevels.warning,
        working_dir=REPO_ROOT,
    ).serve()


@dataclass
class Server:
    url: str
    process: psutil.Process


@contextmanager
def running_portal(env: dict[str, str], log: Path) -> Iterator[Server]:
    """The portal's REST API in its own process group; stopped on exit."""
    import httpx

    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port)],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the server ourselves
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer on {url}:\n{log.read_text()}")
            time.sleep(0.2)
        print(f"server pid {process.pid} on {url}", file=sys.stderr)
        yield Server(url, psutil.Process(process.pid))
    finally:
        _stop_group(process, "server")


# -- measuring -------------------------------------------------------------------------


class RssSampler:
    """Samples the summed RSS of a process and its descendants in a background thread."""

    def __init__(self, root: psutil.Process) -> None:
        self._processes = [root, *root.children(recursive=True)]
        self._stop = threading.Event()
        self.baseline = self.rss()
        self.peak = self.baseline
        self.cpu_seconds = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        total = 0
        for process in self._processes:
            with suppress(psutil.NoSuchProcess):  # a worker being replaced
                total += process.memory_info().rss
        return total

    def cpu(self) -> float:
        """CPU seconds (user and system) the processes used so far."""
        total = 0.0
        for process in self._processes:
            with suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def _run(self) -> None:
        while not self._stop.wait(RSS_INTERVAL):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.baseline = self.rss()
        self.peak = self.baseline
        self.cpu_seconds = -self.cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.cpu_seconds += self.cpu()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@dataclass
class Run:
    seconds: float
    rss_growth: int | None = None
    sent_seconds: float | None = None
    #: boto3's CompleteMultipartUpload call alone (moto joins the parts there)
    complete_seconds: float | None = None
    #: CPU time of the portal's server processes during the publish
    cpu_seconds: float | None = None


@dataclass
class Target:
    name: str
    runs: list[Run] = field(default_factory=list)

    def median(self, pick: Callable[[Run], float | int | None]) -> float:
        values = [pick(run) for run in self.runs]
        return statistics.median(v for v in values if v is not None)


def publish_once(server: Server, token: str, bundle: Path) -> Run:
    """Publish ``bundle`` over REST while sampling the server's RSS; then delete the app."""
    from aimms_portal.client import PortalClient

    sent_at: list[float] = []

    def progress(sent: int, total: int) -> None:
        if sent >= total:
            sent_at.append(time.perf_counter())

    with PortalClient(server.url, token) as client:
        with RssSampler(server.process) as rss:
            started = time.perf_counter()
            release = client.publish_bundle(bundle, progress=progress)
            seconds = time.perf_counter() - started
        if release["bundle_size"] != bundle.stat().st_size:
            raise RuntimeError(f"the portal stored {release['bundle_size']} bytes")
        client.request("DELETE", f"/apps/{APP_NAME}")
    sent = sent_at[0] - started if sent_at else None
    return Run(
        seconds=seconds, rss_growth=rss.growth, sent_seconds=sent, cpu_seconds=rss.cpu_seconds
    )


def boto3_once(endpoint: str, bucket: str, bundle: Path) -> Run:
    """boto3's ``upload_file`` of ``bundle`` with its default settings; then delete it."""
    client = s3_client(endpoint)
    key = f"reference/{uuid.uuid4().hex}.zip"
    marks: dict[str, float] = {}

    def mark(event_name: str, **_: Any) -> None:
        marks[event_name.split(".")[0]] = time.perf_counter()  # (returns None: no reply)

    client.meta.events.register("before-call.s3.CompleteMultipartUpload", mark)
    client.meta.events.register("after-call.s3.CompleteMultipartUpload", mark)
    started = time.perf_counter()
    client.upload_file(str(bundle), bucket, key)
    seconds = time.perf_counter() - started
    client.delete_object(Bucket=bucket, Key=key)
    complete = marks["after-call"] - marks["before-call"] if len(marks) == 2 else None
    return Run(seconds=seconds, complete_seconds=complete)


def copy_once(bundle: Path, folder: Path) -> Run:
    """``shutil.copyfile`` of ``bundle`` into ``folder`` and an fsync; then delete it."""
    target = folder / "copy.zip"
    started = time.perf_counter()
    shutil.copyfile(bundle, target)
    with open(target, "rb+") as copy:
        os.fsync(copy.fileno())
    seconds = time.perf_counter() - started
    target.unlink()
    return Run(seconds=seconds)


def set_up_portal(server: Server, token: str, runtime: tuple[Path, bytes, str]) -> None:
    """Trust the signing key and upload the runtime, over REST like a publisher."""
    from aimms_portal.client import PortalClient

    package, signature, public_text = runtime
    with PortalClient(server.url, token) as client:
        client.trust_signing_key("bench", public_text)
        client.upload_runtime(package, signature)


# -- report ----------------------------------------------------------------------------


def versions() -> str:
    from importlib.metadata import version

    return (
        f"Python {platform.python_version()}, granian {version('granian')}, "
        f"fastapi {version('fastapi')}, httpx {version('httpx')}, boto3 {version('boto3')}, "
        f"moto {version('moto')}"
    )


def _mb_per_s(size: int, seconds: float) -> float:
    return size / MB / seconds


def table(pairs: list[tuple[str, Target, Target]], size: int) -> str:
    lines = [
        "| storage | transfer | median time | throughput | share of reference "
        "| peak RSS growth of the server | body sent after | server CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for storage, reference, portal in pairs:
        ref_seconds = reference.median(lambda r: r.seconds)
        role = "reference" if _has_share_target(storage) else "for orientation only"
        lines.append(
            f"| {storage} | {reference.name} ({role}) | {ref_seconds:.2f} s "
            f"| {_mb_per_s(size, ref_seconds):,.0f} MB/s | 100 % | – | – | – |"
        )
        seconds = portal.median(lambda r: r.seconds)
        share = ref_seconds / seconds
        growth = portal.median(lambda r: r.rss_growth) / MB
        sent = portal.median(lambda r: r.sent_seconds)
        cpu = portal.median(lambda r: r.cpu_seconds)
        lines.append(
            f"| {storage} | {portal.name} | {seconds:.2f} s | {_mb_per_s(size, seconds):,.0f} "
            f"MB/s | {share:.0%} | {growth:,.1f} MB | {sent:.2f} s | {cpu:.2f} s |"
        )
    return "\n".join(lines)


def _has_share_target(storage: str) -> bool:
    # issue 3 names boto3's upload_file as the peer; local storage has only the RSS bound
    return storage.startswith("S3")


def runs_text(pairs: list[tuple[str, Target, Target]]) -> str:
    parts = []
    for storage, reference, portal in pairs:
        ref = ", ".join(
            f"{r.seconds:.2f}"
            + (f" (complete {r.complete_seconds:.2f})" if r.complete_seconds else "")
            for r in reference.runs
        )
        own = ", ".join(
            f"{r.seconds:.2f} s / {(r.rss_growth or 0) / MB:.1f} MB" for r in portal.runs
        )
        parts.append(f"{storage}: reference {ref} s; portal {own}")
    return "; ".join(parts)


def verdicts(pairs: list[tuple[str, Target, Target]]) -> list[str]:
    lines = []
    for storage, reference, portal in pairs:
        share = reference.median(lambda r: r.seconds) / portal.median(lambda r: r.seconds)
        growth = portal.median(lambda r: r.rss_growth) / MB
        worst = max(r.rss_growth or 0 for r in portal.runs) / MB
        memory = (
            f"RSS growth {growth:,.1f} MB (worst run {worst:,.1f} MB) "
            f"{'meets' if worst <= RSS_TARGET_MB else 'misses'} the {RSS_TARGET_MB} MB target"
        )
        if _has_share_target(storage):
            speed = (
                f"throughput {share:.0%} of {reference.name} "
                f"{'meets' if share >= SHARE_TARGET else 'misses'} the {SHARE_TARGET:.0%} target"
            )
        else:
            speed = (
                f"no throughput target (the issue names none for local storage); "
                f"{share:.0%} of {reference.name}, a copy between two local files"
            )
        lines.append(f"- {storage}: {memory}; {speed}.")
    return lines


def report(pairs: list[tuple[str, Target, Target]], size: int, context: dict[str, str]) -> str:
    return "\n".join(
        [
            DOCS_BEGIN,
            f"Run of {context['date']} on {context['machine']} (load average "
            f"{context['load']} before the run); {context['versions']}.",
            "",
            "```",
            context["command"],
            "```",
            "",
            f"Bundle: {size:,} bytes ({size / MB:,.0f} MB), a ZIP made by `pack_app` holding "
            f"`app.json`, `solve.py` and {context['payload']} MiB of random bytes. "
            f"{context['repeat']} runs per row, medians shown; the portal's rows are "
            "`PortalClient.publish_bundle` until the release comes back (the portal "
            "validates the whole archive before it answers; *body sent after* is when the "
            "last byte had left the client; *server CPU* is the user and system time of "
            "the server's processes meanwhile). One Granian process (ASGI, 1 worker) serves "
            "`create_api()`; RSS is that process tree's, sampled every 10 ms, peak minus "
            "the value just before the request.",
            "",
            table(pairs, size),
            "",
            "All runs (time / RSS growth; in brackets the reference's CompleteMultipartUpload "
            f"call, in which moto joins the parts): {runs_text(pairs)}.",
            "",
            *verdicts(pairs),
            DOCS_END,
        ]
    )


def write_docs(path: Path, block: str) -> None:
    """Put ``block`` between the markers in ``path`` (appended if they are missing)."""
    current = path.read_text() if path.exists() else ""
    if DOCS_BEGIN in current and DOCS_END in current:
        before, rest = current.split(DOCS_BEGIN, 1)
        after = rest.split(DOCS_END, 1)[1]
        path.write_text(before + block + after)
    else:
        path.write_text(current.rstrip("\n") + ("\n\n" if current else "") + block + "\n")


# -- main ------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=500, help="payload size in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row")
    parser.add_argument(
        "--storage",
        choices=["s3", "local", "both"],
        default="both",
        help="which storage backends to measure",
    )
    parser.add_argument("--docs", type=Path, help="also write the results into this file")
    parser.add_argument(
        "--hold",
        action="store_true",
        help="before each backend's runs, wait for Enter (to attach a profiler)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="after the measured runs, publish once more under py-spy (on PATH or --py-spy) "
        "and write its folded stacks of the server to DIR/<storage>.txt",
    )
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy binary for --profile")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args()


def measure_backend(
    storage: str,
    *,
    env: dict[str, str],
    scratch: Path,
    bundle: Path,
    runtime: tuple[Path, bytes, str],
    reference: tuple[str, Callable[[], Run]],
    args: argparse.Namespace,
) -> tuple[str, Target, Target]:
    """The reference and the portal, in turn, ``args.repeat`` times on one backend."""
    with ExitStack() as stack:
        database_url = stack.enter_context(throwaway_database())
        token = seed(database_url)
        server_env = {**env, "AIMMS_PORTAL_DATABASE_URL": database_url}
        server = stack.enter_context(running_portal(server_env, scratch / f"{storage}.log"))
        set_up_portal(server, token, runtime)
        if args.hold:
            input(f"{storage}: server pid {server.process.pid} on {server.url}; Enter starts")
        ref_target = Target(reference[0])
        portal_target = Target("portal publish over REST")
        for n in range(args.repeat):
            ref_run = reference[1]()
            ref_target.runs.append(ref_run)
            run = publish_once(server, token, bundle)
            portal_target.runs.append(run)
            complete = ref_run.complete_seconds
            print(
                f"{storage} #{n + 1}: reference {ref_run.seconds:.2f} s"
                + (f" (complete {complete:.2f} s)" if complete else "")
                + f", portal "
                f"{run.seconds:.2f} s (body sent after {run.sent_seconds or 0:.2f} s), "
                f"RSS +{(run.rss_growth or 0) / MB:.1f} MB, CPU {run.cpu_seconds or 0:.2f} s",
                file=sys.stderr,
            )
        if args.profile:
            profile_once(server, token, bundle, args, args.profile / f"{storage.split()[0]}.txt")
    return storage, ref_target, portal_target


def profile_once(
    server: Server, token: str, bundle: Path, args: argparse.Namespace, output: Path
) -> None:
    """One more publish with py-spy sampling the server's processes (not measured)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [
            args.py_spy,
            "record",
            "--pid",
            str(server.process.pid),
            "--subprocesses",
            "--threads",
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        publish_once(server, token, bundle)
    finally:
        _stop_group(spy, "py-spy")
    print(f"profile of one publish: {output}", file=sys.stderr)


def main() -> int:
    args = parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    # a plain `kill` must clean up too: turn SIGTERM into an exception
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.update(FAKE_AWS_ENV)

    try:
        python = str(Path(sys.executable).relative_to(REPO_ROOT))
    except ValueError:
        python = "python"
    context = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "command": " ".join([python, "bench/publish_throughput.py", *sys.argv[1:]]),
        "load": ", ".join(f"{value:.1f}" for value in os.getloadavg()),
        "payload": str(args.size_mb),
        "repeat": str(args.repeat),
    }
    pairs: list[tuple[str, Target, Target]] = []
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aimms-bench-")))
        (scratch / "tmp").mkdir()
        started = time.perf_counter()
        bundle = make_bundle(scratch, args.size_mb)
        runtime = make_runtime(scratch)
        size = bundle.stat().st_size
        print(
            f"bundle of {size:,} bytes made in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        common = {
            "AIMMS_PORTAL_LOG_LEVEL": "WARNING",
            "AIMMS_PORTAL_DEMO": "false",
            "AIMMS_PORTAL_DATA_DIR": str(scratch / "data"),
            "AIMMS_PORTAL_UPLOAD_MAX_BYTES": str(size + 64 * MiB),
            # the portal spools uploads into the temporary folder: keep them in ours
            "TMPDIR": str(scratch / "tmp"),
        }
        if args.storage in ("s3", "both"):
            endpoint = stack.enter_context(moto_server(scratch / "moto.log"))
            bucket = stack.enter_context(bucket_on(endpoint))
            pairs.append(
                measure_backend(
                    "S3 (moto)",
                    env={
                        **common,
                        "AIMMS_PORTAL_STORAGE_URL": f"s3://{bucket}/portal",
                        "AIMMS_PORTAL_S3_ENDPOINT_URL": endpoint,
                    },
                    scratch=scratch,
                    bundle=bundle,
                    runtime=runtime,
                    reference=(
                        "boto3 upload_file",
                        lambda: boto3_once(endpoint, bucket, bundle),
                    ),
                    args=args,
                )
            )
        if args.storage in ("local", "both"):
            copies = scratch / "copies"
            copies.mkdir()
            pairs.append(
                measure_backend(
                    "local folder",
                    env={**common, "AIMMS_PORTAL_STORAGE_URL": (scratch / "storage").as_uri()},
                    scratch=scratch,
                    bundle=bundle,
                    runtime=runtime,
                    reference=("shutil.copyfile + fsync", lambda: copy_once(bundle, copies)),
                    args=args,
                )
            )
    block = report(pairs, size, context)
    print(block)
    if args.docs:
        write_docs(args.docs, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
