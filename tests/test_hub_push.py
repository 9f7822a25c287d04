"""push_to_hub through huggingface_hub's real upload code (HfApi.create_repo / create_commit) against a local stub.

The Hugging Face Hub cannot be reached here, so a small HTTP server stands in for the five endpoints one commit of
small files touches: repo creation, README metadata validation, pre-upload (it answers "regular" for every file,
so contents travel inline in the commit; the LFS / Xet transfer of large files is NOT exercised), the repo-info
lookup for Xet, and the commit itself. The stub only records what it receives; what is checked is what
huggingface_hub sent on our behalf: one commit, exactly the format's files with the bytes save_pretrained writes,
the card, the message.
"""

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from huggingface_hub import ModelCard, constants, file_download
from huggingface_hub.utils import reset_sessions

from test_hub import ADAPTER_KWARGS, FORMAT_FILES, steered_on
from tiny_common import save_pusht_diffusion_base
from vla_steer.cli import main as cli

COMMIT_SHA = "c" * 40


class StubHub(BaseHTTPRequestHandler):
    """Records repo creations, validated READMEs and commits (decoded from huggingface_hub's NDJSON payload)."""

    log: dict

    def _reply(self, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        url = urlparse(self.path)
        path = unquote(url.path)
        if path == "/api/models":  # list_models(filter=[tags]): the repos whose card carries every tag
            wanted = parse_qs(url.query).get("filter", [])
            return self._reply([{"id": repo, "sha": COMMIT_SHA, "tags": tags, "lastModified": "2026-11-27T00:00:00.000Z"}
                                for repo, tags in self._repo_tags().items() if set(wanted) <= set(tags)])
        if "/resolve/" in path:  # hf_hub_download: the file of the repo's last commit
            return self._send_file(path, body=True)
        repo = path.removeprefix("/api/models/").split("/revision/")[0]  # repo_info(expand="xetEnabled") before LFS uploads
        self._reply({"id": repo, "sha": COMMIT_SHA, "xetEnabled": False, "siblings": []})

    def do_HEAD(self):  # noqa: N802  hf_hub_download's metadata request
        self._send_file(unquote(urlparse(self.path).path), body=False)

    def _files(self) -> dict:
        """``{repo: {path: bytes}}`` after every recorded commit."""
        repos = {}
        for commit in self.log["commits"]:
            repos.setdefault(commit["repo"], {}).update(commit["files"])
        return repos

    def _repo_tags(self) -> dict:
        return {repo: ModelCard(files["README.md"].decode()).data.tags or []
                for repo, files in self._files().items() if "README.md" in files}

    def _send_file(self, path: str, body: bool) -> None:
        repo, rest = path.lstrip("/").split("/resolve/", 1)
        content = self._files().get(repo, {}).get(rest.split("/", 1)[1])
        if content is None:
            return self.send_error(404)
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT_SHA)
        self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)

    def do_POST(self):  # noqa: N802
        path = unquote(urlparse(self.path).path)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        url = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
        if path == "/api/repos/create":
            request = json.loads(body)
            repo = f"{request['organization']}/{request['name']}"
            self.log["created"].append({"repo": repo, "private": request.get("private")})
            return self._reply({"url": f"{url}/{repo}"})
        if path == "/api/validate-yaml":
            self.log["validated"].append(json.loads(body)["content"])
            return self._reply({"errors": [], "warnings": []})
        repo, action, revision = path.removeprefix("/api/models/").rsplit("/", 2)
        if action == "preupload":
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in files]})
        if action == "commit":
            commit = {"repo": repo, "revision": revision, "files": {}}
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "header":
                    commit.update(summary=item["value"]["summary"], description=item["value"].get("description"))
                elif item["key"] == "file":
                    assert item["value"]["encoding"] == "base64"
                    commit["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                else:
                    commit.setdefault("other", []).append(item)
            self.log["commits"].append(commit)
            return self._reply({"commitUrl": f"{url}/{repo}/commit/{COMMIT_SHA}", "commitOid": COMMIT_SHA,
                                "pullRequestUrl": None})
        self.send_error(404)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def hub(monkeypatch):
    """A stub Hub on localhost; huggingface_hub's offline mode (set for every test) is lifted for it."""
    log = {"created": [], "validated": [], "commits": []}
    handler = type("Handler", (StubHub,), {"log": log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", url)  # what HF_ENDPOINT=<url> sets when huggingface_hub is imported
    for module in (constants, file_download):  # file URLs: file_download copied the template at import
        monkeypatch.setattr(module, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    reset_sessions()  # sessions are cached with the offline adapter mounted
    monkeypatch.setenv("HF_TOKEN", "hf_stub_token")  # so no token stored on this machine is read and sent
    yield {"url": url, "log": log}
    server.shutdown()
    monkeypatch.undo()
    reset_sessions()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_pusht_diffusion_base(tmp_path_factory.mktemp("push") / "base")


def test_steered_policy_push_to_hub_sends_one_commit_of_the_format_files(hub, base_dir, tmp_path):
    policy = steered_on(base_dir)
    info = policy.push_to_hub("me/steered-diffusion", private=True)
    assert info.oid == COMMIT_SHA
    assert hub["log"]["created"] == [{"repo": "me/steered-diffusion", "private": True}]
    [commit] = hub["log"]["commits"]
    assert commit["repo"] == "me/steered-diffusion" and commit["revision"] == "main" and "other" not in commit
    assert commit["summary"] == f"Upload lpds steering head for {base_dir}"
    assert "sha256-sampled-v1" in commit["description"]
    assert set(commit["files"]) == FORMAT_FILES | {"README.md"}
    local = tmp_path / "local"  # what save_pretrained writes for the same repo id
    policy.save_pretrained(local, model_card=True, card_kwargs={"repo_id": "me/steered-diffusion"})
    for name, content in commit["files"].items():
        assert content == (local / name).read_bytes(), name
    assert hub["log"]["validated"] == [commit["files"]["README.md"].decode()]  # the card's YAML checked first
    card = ModelCard(commit["files"]["README.md"].decode())
    assert card.data.library_name == "vla_steer" and "lerobot" in card.data.tags


def test_cli_push_uploads_a_head_directory(hub, base_dir, tmp_path, capsys):
    steered_on(base_dir).save_pretrained(tmp_path / "head")
    assert cli(["push", str(tmp_path / "head"), "--repo-id", "me/cli-head",
                "--commit-message", "first head"]) == 0
    assert f"/me/cli-head/commit/{COMMIT_SHA}" in capsys.readouterr().out
    [commit] = hub["log"]["commits"]
    assert commit["summary"] == "first head" and set(commit["files"]) == FORMAT_FILES | {"README.md"}
    assert "lerobot-eval --policy.path=me/cli-head" in commit["files"]["README.md"].decode()


def test_acting_head_push_to_hub_on_a_built_in_base(hub):
    """A head on vla_steer's own base (built in memory): the base named as a Hub id goes into the card's
    base_model; the upload holds the head's two files and the card (no LeRobot files)."""
    import torch

    from test_hub import make_head
    from vla_steer.adapters import NativePolicyAdapter
    from vla_steer.policies import ChunkPolicyConfig
    from vla_steer.policies.diffusion import DiffusionChunkPolicy

    torch.manual_seed(0)
    adapter = NativePolicyAdapter(DiffusionChunkPolicy(ChunkPolicyConfig(type="diffusion", obs_dim=3, action_dim=2,
                                                                         hidden_dim=16, num_layers=1)))
    head = make_head(adapter.noise_shape, adapter.feature_dim, seed=0)
    head.push_to_hub("me/native-head", base=adapter, base_model_name_or_path="me/native-base", revision="d" * 40)
    [commit] = hub["log"]["commits"]
    assert set(commit["files"]) == {"README.md", "head.safetensors", "head_config.json"}
    config = json.loads(commit["files"]["head_config.json"])
    assert config["base_model_name_or_path"] == "me/native-base" and config["revision"] == "d" * 40
    card = ModelCard(commit["files"]["README.md"].decode())
    assert card.data.base_model == "me/native-base" and "lerobot" not in card.data.tags


def test_search_finds_the_heads_of_a_base_and_not_those_of_another(hub, base_dir, tmp_path, capsys):
    """Heads pushed for two bases; a third repo carries the first base's tag over the second base's head. Searching
    by the first base (a local directory) lists its head only, and says why the mis-tagged one was left out."""
    import dataclasses

    from vla_steer.hub.api import search_heads

    other_base = save_pusht_diffusion_base(tmp_path / "other_base", seed=1)
    steered_on(base_dir).push_to_hub("me/head-a")
    steered_on(other_base).push_to_hub("me/head-b")
    tag_a = next(t for t in ModelCard(hub["log"]["commits"][0]["files"]["README.md"].decode()).data.tags
                 if t.startswith("vla-steer-base-"))
    liar = dict(hub["log"]["commits"][1], repo="me/mis-tagged")
    card_b = ModelCard(liar["files"]["README.md"].decode())
    card_b.data.tags = [*card_b.data.tags, tag_a]
    liar["files"] = {**liar["files"], "README.md": str(card_b).encode()}
    hub["log"]["commits"].append(liar)

    fingerprint, heads, skipped = search_heads(base_dir)
    assert [h.repo_id for h in heads] == ["me/head-a"] and heads[0].algorithm == "lpds"
    assert heads[0].adapter_kwargs == ADAPTER_KWARGS and heads[0].revision == COMMIT_SHA
    assert fingerprint["weights"].startswith(tag_a.removeprefix("vla-steer-base-"))
    assert skipped == ["me/mis-tagged: tagged for this base, but its recorded fingerprint is of other weights"]
    assert [h.repo_id for h in search_heads(other_base)[1]] == ["me/head-b", "me/mis-tagged"]  # it is B's head
    assert search_heads(save_pusht_diffusion_base(tmp_path / "third", seed=2))[1] == []

    assert cli(["search", "--base", str(base_dir)]) == 0
    out = capsys.readouterr().out
    assert f"tag {tag_a}" in out and "me/head-a" in out and "me/head-b" not in out and "skipped me/mis-tagged" in out
    assert cli(["search", "--base", str(base_dir), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["heads"] == [dataclasses.asdict(heads[0])] and listed["tag"] == tag_a
    assert cli(["search", "--base", str(tmp_path / "nowhere")]) == 2  # a missing base: a clean error
