"""A running Triton server, as a rollout talks to it: Triton's model repository API (load,
index), model metadata and configuration, readiness per version, and inference on one version
(tritonclient over HTTP).

Every call is bounded in time; a server that does not answer, or answers with an error, is a
`SubtuneError` of one line carrying the server's own message.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np

from subtune.errors import SubtuneError
from subtune.serving.versions import CLIENTS_HINT

log = logging.getLogger(__name__)
DEFAULT_URL = "127.0.0.1:8000"


class LoadNotAllowed(SubtuneError):
    """The server takes no load requests (started without explicit model control)."""


class LoadFailed(SubtuneError):
    """The server tried to load the model and could not; it keeps serving what it served."""


class LoadTimedOut(SubtuneError):
    """The server did not finish loading within the bound; it may still be loading."""


def normalize_url(url: str) -> str:
    url = url.strip()
    for scheme in ("http://", "https://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    url = url.rstrip("/")
    if url.endswith("/v2"):
        url = url[:-3]
    if not url or "/" in url:
        raise SubtuneError(f"--url {url!r}: expected HOST:PORT of the server's HTTP endpoint (e.g. {DEFAULT_URL})")
    return url


@dataclass
class ServerControl:
    url: str = DEFAULT_URL
    timeout_s: float = 300.0  # the longest a load may take
    request_timeout_s: float = 30.0

    def __post_init__(self):
        self.url = normalize_url(self.url)
        try:
            import tritonclient.http as http
            from tritonclient.utils import InferenceServerException
        except ImportError as e:
            raise SubtuneError(f"talking to a Triton server needs tritonclient ({e}); {CLIENTS_HINT}") from None
        self._http, self._error = http, InferenceServerException
        self._client = http.InferenceServerClient(self.url, connection_timeout=self.request_timeout_s,
                                                  network_timeout=self.request_timeout_s)
        self._loader = http.InferenceServerClient(self.url, connection_timeout=self.request_timeout_s,
                                                  network_timeout=self.timeout_s)

    def close(self) -> None:
        for c in (self._client, self._loader):
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def __enter__(self) -> "ServerControl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- reading
    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._error as e:
            raise SubtuneError(f"the server at {self.url}: {what}: {_first_line(e.message() or str(e))}") from None
        except Exception as e:  # noqa: BLE001 - gevent and urllib3 raise their own kinds for a dead socket
            raise self._unreachable(e) from None

    def _unreachable(self, e: Exception) -> SubtuneError:
        return SubtuneError(f"no Triton server answers at {self.url} ({type(e).__name__}: {_first_line(str(e))}); "
                            "start one with `subtune serve REPO`, or pass --url")

    def check_live(self) -> None:
        if not self._call("live", self._client.is_server_live):
            raise SubtuneError(f"the Triton server at {self.url} is not live")

    def ready_versions(self, name: str) -> list[int]:
        """The versions of `name` the server has ready (empty when none)."""
        try:
            meta = self._client.get_model_metadata(name)
        except self._error:
            return []
        except Exception as e:  # noqa: BLE001 - gevent and urllib3 raise their own kinds for a dead socket
            raise self._unreachable(e) from None
        versions = []
        for v in meta.get("versions", []):
            try:
                if self._client.is_model_ready(name, str(v)):
                    versions.append(int(v))
            except self._error:
                continue
        return sorted(versions)

    def config(self, name: str) -> dict:
        return self._call(f"configuration of {name}", self._client.get_model_config, name)

    def index(self) -> list[dict]:
        return self._call("repository index", self._client.get_model_repository_index)

    def failure_reason(self, name: str, version: int) -> str | None:
        for entry in self.index():
            if entry.get("name") == name and str(entry.get("version")) == str(version) and entry.get("reason"):
                if entry.get("state") != "READY" and entry.get("reason") != "unloaded":
                    return _first_line(entry["reason"])
        return None

    # ---------------------------------------------------------------- changing
    def load(self, name: str, timeout_s: float | None = None) -> float:
        """Ask the server to load (or reload) `name` from its repository and wait for it (at most
        `timeout_s`, default the rollout's load timeout); returns the seconds it took. Raises
        LoadNotAllowed, LoadFailed (the server's reason) or LoadTimedOut."""
        began = time.monotonic()
        bound = self.timeout_s if timeout_s is None else timeout_s
        client = self._loader if timeout_s is None else self._http.InferenceServerClient(
            self.url, connection_timeout=self.request_timeout_s, network_timeout=bound)
        try:
            client.load_model(name)
        except self._error as e:
            message = e.message() or str(e)
            if "not allowed" in message:
                raise LoadNotAllowed(f"the server at {self.url} takes no load requests ({_first_line(message)}): "
                                     "it was started without explicit model control; restart it with "
                                     "`subtune serve REPO` (explicit model control is its default)") from None
            if "timed out" in message.lower() or "timeout" in message.lower():
                raise LoadTimedOut(f"the server at {self.url} did not finish loading {name} within {bound:g} s "
                                   "(--timeout)") from None
            raise LoadFailed(_server_reason(message)) from None
        except Exception as e:  # noqa: BLE001 - the client's socket timeout and friends
            if time.monotonic() - began >= bound * 0.9:
                raise LoadTimedOut(f"the server at {self.url} did not finish loading {name} within {bound:g} s "
                                   "(--timeout)") from None
            raise SubtuneError(f"the server at {self.url} stopped answering while loading {name} "
                               f"({type(e).__name__}: {_first_line(str(e))})") from None
        finally:
            if client is not self._loader:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        return time.monotonic() - began

    def wait_versions(self, name: str, versions: list[int], timeout_s: float) -> bool:
        """Wait (bounded) until exactly `versions` of `name` are ready; True if they are."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.ready_versions(name) == sorted(versions):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def infer(self, name: str, version: int, images: np.ndarray, max_batch: int) -> dict[str, np.ndarray]:
        """Every output of version `version` of `name` on `images`, in requests of at most
        `max_batch` images."""
        http = self._http
        parts: dict[str, list[np.ndarray]] = {}
        config = self.config(name)
        outputs = [o["name"] for o in config.get("output", [])]
        feed = config["input"][0]["name"]
        # a task-select graph's mask, where clients must send it (Triton's onnxruntime backend): every
        # task on every image; the python backend's model builds it from the outputs asked for
        masks = [i for i in config["input"][1:] if i.get("data_type") == "TYPE_BOOL" and not i.get("optional")]
        for start in range(0, len(images), max_batch):
            chunk = np.ascontiguousarray(images[start:start + max_batch])
            inp = http.InferInput(feed, list(chunk.shape), "FP32")
            inp.set_data_from_numpy(chunk, binary_data=True)
            inputs = [inp]
            for m in masks:
                mask = np.ones((len(chunk), *(int(d) for d in m["dims"])), dtype=bool)
                inputs.append(http.InferInput(m["name"], list(mask.shape), "BOOL"))
                inputs[-1].set_data_from_numpy(mask, binary_data=True)
            asked = [http.InferRequestedOutput(o, binary_data=True) for o in outputs]
            result = self._call(f"inference on {name} version {version}", self._client.infer, name, inputs,
                                model_version=str(version), outputs=asked)
            answered = result.get_response().get("model_version")
            if str(answered) != str(version):
                raise SubtuneError(f"the server at {self.url} answered a request for {name} version {version} "
                                   f"with version {answered}")
            for o in outputs:
                parts.setdefault(o, []).append(result.as_numpy(o))
        return {o: np.concatenate(v) for o, v in parts.items()}


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0].strip()


def _server_reason(message: str) -> str:
    """Triton's load error on one line, without the Python traceback it carries."""
    text = message.replace("\\n", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "the server gave no reason"
    keep = [lines[0]]
    for line in lines[1:]:
        if line.startswith("At:") or line.startswith("<frozen") or line.startswith("/") or line.endswith(";"):
            break
        keep.append(line)
    return " ".join(keep).rstrip(";")


def parse_history(config: dict, key: str) -> list[int] | None:
    """The `served_versions` parameter of a configuration the server returned (JSON), or None."""
    raw = config.get("parameters", {}).get(key, {}).get("string_value")
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, list) else None
