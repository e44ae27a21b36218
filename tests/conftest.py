"""Shared fixtures: demo SA-1B tars written on the fly, the optional ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastsam_train.data.demo import make_demo_sa1b

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (2 threads on a busy 2-core box are much slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_tars(tmp_path_factory) -> list[Path]:
    """Two SA-1B-format tars of 6 synthetic 240x320 images each (read-only: copy to modify)."""
    return make_demo_sa1b(tmp_path_factory.mktemp("sa1b"), num_tars=2, images_per_tar=6,
                          height=240, width=320, seed=1)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_shards(demo_tars, tmp_path_factory) -> Path:
    """The demo tars converted to shards (3 samples per shard, ~25% val); read-only."""
    from fastsam_train.data.convert import ConvertOptions, convert_dataset
    from fastsam_train.data.inputs import SA1BInput
    from fastsam_train.data.records import RecordOptions

    out = tmp_path_factory.mktemp("shards")
    opts = ConvertOptions(fraction=1.0, val_fraction=0.25, samples_per_shard=3,
                          record=RecordOptions(max_side=320))
    convert_dataset(SA1BInput([str(demo_tars[0].parent)]), out, opts, workers=1)
    return out


@pytest.fixture
def http_folder():
    """Serve folders over HTTP on 127.0.0.1 (python's http.server in a thread):
    ``url, requests = http_folder(path)``; ``requests`` collects the requested paths."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def serve(folder: Path) -> tuple[str, list[str]]:
        requests: list[str] = []

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # quiet
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0),
                                     functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", requests

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
