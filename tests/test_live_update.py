"""Keyword-store live updates on the real server: no failed request while versions swap."""
import collections
import re
import threading
import time

import numpy as np
import pytest

from client import InvalidRequest, TwinBertClient
from serving.keyword_store import IndexSpec, KeywordStore, StoreError, latest_version, write_version
from serving.server import TritonServer, free_server_ports
from serving.update_store import build_updated_version, publish

pytestmark = pytest.mark.server

TITLES = {"d1": "DEWALT Cordless Drill Driver Kit", "f1": "Hampton Bay Ceiling Fan with Light",
          "h1": "Flexzilla 50 ft. Garden Hose", "p1": "BEHR Premium Interior Paint",
          "t1": "American Standard Toilet Seat", "k1": "Glacier Bay Kitchen Faucet"}


@pytest.fixture
def live(tiny_export, tmp_path, build_repository):
    store, repo = build_repository(tiny_export, TITLES, tmp_path)
    with TritonServer(repo, **free_server_ports(),
                      log_file=tmp_path / "server.log") as server:
        yield server, store, repo


def _instances_started(repo) -> collections.Counter:
    """Model instances the `live` server has started so far, per model (its log names each): a served
    version loaded again would start its instances again, while Triton's 'loading: m:N' lines appear
    for config-only updates too."""
    log = (repo.parent / "server.log").read_text()
    return collections.Counter(re.findall(r"ModelInstanceInitialize: (\w+?)_\d+_\d+ ", log))


class Load:
    """Background retrieve + relevance requests (bounded), counting failures."""

    def __init__(self, url):
        self.url, self.stop, self.ok, self.failed = url, threading.Event(), 0, []
        self.thread = threading.Thread(target=self.run)

    def wait_for(self, n, timeout_s=120.0):
        """Until `n` requests have been answered: a bounded wait that fails, instead of hanging, when
        the load thread has died or every request fails."""
        deadline = time.monotonic() + timeout_s
        while self.ok < n:
            assert self.thread.is_alive(), f"the load thread stopped after {self.ok} answers: {self.failed[:3]}"
            assert time.monotonic() < deadline, f"{self.ok} of {n} answers in {timeout_s} s: {self.failed[:3]}"
            time.sleep(0.005)

    def run(self):
        with TwinBertClient(self.url) as c:
            for _ in range(20000):
                if self.stop.is_set():
                    return
                try:
                    self.one(c)
                    self.ok += 1
                except Exception as e:  # noqa: BLE001 - any failure counts
                    self.failed.append(repr(e))

    def one(self, c):
        c.retrieve("cordless drill", 3)
        c.relevance("drill", ["d1", "f1"])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)


def test_add_replace_delete_while_serving_with_no_failed_request(live, tiny_export):
    server, store, repo = live
    debris = repo.with_name(repo.name + ".retired") / "keyword_store" / ".retiring-9"
    debris.mkdir(parents=True)  # what a publish killed while retiring would leave
    (debris / "model.py").write_text("")
    with Load(server.grpc_url) as load:
        version = build_updated_version(tiny_export, store, add={"n1": "Ryobi Impact Driver Bit Set",
                                                                 "h1": "Gilmour 100 ft. Rubber Garden Hose"},
                                         delete={"p1"})
        load.wait_for(3)  # traffic flows before the swap, so "no failed request" covers it
        assert publish(repo, version, server.grpc_url) == 2
        load.wait_for(load.ok + 5)  # and keeps flowing on the new version
    assert load.failed == [] and load.ok > 5
    with TwinBertClient(server.grpc_url) as c:
        assert c.retrieve("impact driver bits", 1)[0].keyword_id == "n1"
        assert c.retrieve("100 ft rubber hose", 1)[0].keyword == "Gilmour 100 ft. Rubber Garden Hose"
        with pytest.raises(InvalidRequest, match="'p1'"):
            c.relevance("paint", ["p1"])
        health = c.health(f"http://127.0.0.1:{server.metrics_port}/metrics")
        store_versions = health["models"]["keyword_store"]
        assert {"version": "2", "state": "READY"} in store_versions
        assert {"version": "1", "state": "READY"} not in store_versions  # the old version is unloaded
        assert health["keyword_store_size"] == {"2": 6}  # not v1's gauge, which outlives its unloading
    manifest = KeywordStore(latest_version(store)).manifest
    assert manifest["count"] == 6 and manifest["base_version"] == 1
    # the old version is kept beside the repository for rollback, the debris is gone
    assert sorted(p.name for p in debris.parent.iterdir()) == ["1"]


def test_a_publish_that_could_not_retire_the_old_versions_is_refused_before_anything_changes(
        tiny_export, tmp_path, build_repository):
    """Retiring is a rename into <repository>.retired after the ensembles have switched; where that
    cannot work the update is refused up front (no server is reached), not half-done."""
    store, repo = build_repository(tiny_export, TITLES, tmp_path)
    repo.with_name(repo.name + ".retired").write_text("not a directory")
    version = build_updated_version(tiny_export, store, delete={"p1"})
    with pytest.raises(StoreError, match="cannot keep the retired versions in .*repo.retired.*nothing was changed"):
        publish(repo, version, "127.0.0.1:9")
    for model in ("keyword_store", "keyword_vectors"):
        assert [p.name for p in (repo / model).iterdir() if p.name[0].isdigit() or p.name.startswith(".")] == ["1"]


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(live, tiny_export):
    server, store, repo = live
    old = KeywordStore(latest_version(store))
    bad = write_version(store, old.ids, old.texts, old.vectors_at(np.arange(len(old))), IndexSpec("flat"),
                        encoder_sha256="another-encoder")
    with Load(server.grpc_url) as load:
        load.wait_for(3)
        with pytest.raises(StoreError, match="(?s)built with encoder another-enco.*the previous versions keep serving"):
            publish(repo, bad, server.grpc_url)
    assert load.failed == [] and load.ok > 0
    with TwinBertClient(server.grpc_url) as c:
        assert c.retrieve("cordless drill", 1)[0].keyword_id == "d1"
    assert not (repo / "keyword_store" / "2").exists()


def test_deleting_an_unknown_id_is_refused(live, tiny_export):
    _, store, _ = live
    with pytest.raises(KeyError, match="'zz'"):
        build_updated_version(tiny_export, store, delete={"zz"})
    with pytest.raises(ValueError, match="deletes all 6 keywords and adds none"):
        build_updated_version(tiny_export, store, delete=set(TITLES))


def test_deleting_the_warm_up_keyword_still_loads(live, tiny_export):
    """keyword_vectors warms up on its version's first ids; an update that deletes them must not make
    its version unloadable."""
    server, store, repo = live

    def stamps():  # what Triton compares to decide whether a served version changed
        return {str(f): (f.stat().st_mtime_ns, f.stat().st_ctime_ns)
                for m in ("tokenizer", "query_encoder", "pool_cross") for f in (repo / m / "1").rglob("*")}
    before = stamps()

    at_start = _instances_started(repo)
    assert at_start["keyword_store"] > 0 and at_start["tokenizer"] > 0
    first = KeywordStore(latest_version(store)).ids[0]
    assert publish(repo, build_updated_version(tiny_export, store, delete={first}), server.grpc_url) == 2
    with TwinBertClient(server.grpc_url) as c:
        with pytest.raises(InvalidRequest, match=repr(first)):
            c.relevance("drill", [first])
        assert {"version": "2", "state": "READY"} in c.health()["models"]["keyword_vectors"]
    second = KeywordStore(latest_version(store)).ids[0]
    assert publish(repo, build_updated_version(tiny_export, store, delete={second}), server.grpc_url) == 3
    # the second update deleted the retired keyword_store/1, which held the same export files as the
    # encoder's models: had they shared inodes, their served versions would count as changed
    assert stamps() == before
    # and each update started only its new versions' instances: nothing that served was loaded again
    assert _instances_started(repo) == {m: n * (3 if m in ("keyword_store", "keyword_vectors") else 1) for m, n in at_start.items()}


class RetrieveLoad(Load):
    """Background `retrieve` requests keeping the ids each answered (relevance would name ids that the
    swap retires)."""

    def __init__(self, url):
        super().__init__(url)
        self.answers = []

    def one(self, c):
        self.answers.append({h.keyword_id for h in c.retrieve("cordless drill", 3)})


def test_an_update_that_replaces_every_id_swaps_under_load(live, tiny_export):
    """A whole catalogue replaced (no id in common): the new version loads beside the old one and the
    ensembles switch over with no failed request; each answer comes from one catalogue, old ones first.
    (An earlier build warmed keyword_vectors up on one id from a file all versions share, so the old
    version's reload failed on an id of the new catalogue and the swap was refused.)"""
    server, store, repo = live
    new_titles = {"n1": "Ryobi Impact Driver Bit Set", "n2": "Gilmour Rubber Garden Hose",
                  "n3": "Makita Cordless Drill Combo Kit", "n4": "Moen Bathroom Sink Faucet"}
    version = build_updated_version(tiny_export, store, add=new_titles, delete=set(TITLES))
    with RetrieveLoad(server.grpc_url) as load:
        load.wait_for(3)
        assert publish(repo, version, server.grpc_url) == 2
        load.wait_for(load.ok + 5)
    assert load.failed == []
    kinds = ["old" if ids <= set(TITLES) else "new" if ids <= set(new_titles) else "mixed" for ids in load.answers]
    assert "mixed" not in kinds and kinds[0] == "old" and kinds[-1] == "new"
    assert kinds == sorted(kinds, key=lambda k: k == "new")  # never back to the old catalogue
    with TwinBertClient(server.grpc_url) as c:
        assert len(c.relevance("drill", ["n3", "n1"])) == 2
        with pytest.raises(InvalidRequest, match="'d1'"):
            c.relevance("drill", ["d1"])
        versions = c.health()["models"]["keyword_vectors"]
        assert {"version": "2", "state": "READY"} in versions and {"version": "1", "state": "READY"} not in versions
    assert not (repo / "keyword_vectors" / "warmup").exists()  # no shared sample that names an id


def test_the_update_benchmark_swaps_both_updates_with_no_failed_request(tiny_export, tmp_path, build_repository,
                                                                         monkeypatch):
    """`python -m client.suite update` (make bench-update) on a small store: both updates publish under
    its traffic, and its report counts the answers of each catalogue."""
    import json

    from client.suite import live_update
    monkeypatch.setenv("TWINBERT_ARTIFACTS", str(tmp_path / "artifacts"))
    store, _ = build_repository(tiny_export, TITLES, tmp_path)
    result = live_update(tiny_export, store, tmp_path / "live_update", idle_s=0.5, replaced=2, deleted=1,
                         queries=["cordless drill", "garden hose"])
    assert result["failed_total"] == 0 and result["keywords"] == 6
    swap = result["catalogue_swap_answers"]
    assert swap["new"] > 0 and swap["mixed"] == 0 and not swap["old_after_new"]
    # traffic ran through both publishes (the short build and idle windows of this tiny store may
    # fall inside one stall of a loaded host, so only the publishes are required to have requests)
    assert all(result["phases"][p]["requests"] > 0 for p in ("partial: publish", "catalogue: publish"))
    assert json.loads((tmp_path / "live_update.json").read_text()) == result
    assert "| catalogue: publish |" in (tmp_path / "live_update.md").read_text()
    assert len(KeywordStore(latest_version(store))) == 6  # the benchmark updated its own copy


class Recorder(Load):
    """Load that keeps what each request answered: (retrieve ids, retrieve scores, relevance scores)."""

    def __init__(self, url):
        super().__init__(url)
        self.answers = []

    def one(self, c):
        hits = c.retrieve("cordless drill", 3)
        scores = c.relevance("drill", ["d1", "f1"])
        self.answers.append(([h.keyword_id for h in hits], [h.score for h in hits], scores))


def _expected(pipe):
    ids, _, scores = pipe.retrieve("cordless drill", 3)
    return [i.decode() for i in ids[0]], scores[0].tolist(), pipe.relevance("drill", ["d1", "f1"]).tolist()


def _same(answer, expected, atol=1e-4):
    return answer[0] == expected[0] and np.allclose(answer[1], expected[1], atol=atol) \
        and np.allclose(answer[2], expected[2], atol=atol)


def _new_encoder(tmp_path, build_repository, seed):
    """A 2-layer encoder (the live repository's is 1-layer), exported, with a store and a repository
    built on it: (export, store, repository)."""
    import torch

    from training.export import export
    from training.twin import TwinBERT, TwinConfig
    torch.manual_seed(seed)
    TwinBERT(TwinConfig(num_layers=2)).save(tmp_path / "model2")
    export2 = export(tmp_path / "model2", tmp_path / "export2")
    (tmp_path / "new").mkdir()
    return (export2, *build_repository(export2, TITLES, tmp_path / "new"))


def test_a_new_encoder_rolls_out_whole_under_load(live, tiny_export, tmp_path, build_repository):
    """Every model of the encoder family gets a new version at once; each request is answered entirely
    by the old models or entirely by the new ones (a new query encoder never meets the old index)."""
    from serving.pipeline import InProcessPipeline
    from serving.rollout import rollout
    server, store, repo = live
    export2, store2, repo2 = _new_encoder(tmp_path, build_repository, 7)
    old, new = _expected(InProcessPipeline(repo)), _expected(InProcessPipeline(repo2))
    assert not _same(old, new)  # the two encoders answer differently, so a mix would show
    with pytest.raises(StoreError, match="rebuild the index"):  # the old store with the new encoder
        rollout(repo, export2, store, server.grpc_url)
    at_start = _instances_started(repo)
    with Recorder(server.grpc_url) as load:
        load.wait_for(3)
        versions = rollout(repo, export2, store2, server.grpc_url)
        load.wait_for(load.ok + 5)
    assert versions == {m: 2 for m in ("tokenizer", "query_encoder", "pool_cross", "keyword_store", "keyword_vectors")}
    assert load.failed == []
    assert _instances_started(repo) == {m: 2 * n for m, n in at_start.items()}  # the new versions' alone
    # each request by itself (a retrieve and the relevance call after it may straddle the switch)
    for part in ((0, 1), (2,)):
        def which(a, e):
            return all(np.allclose(a[i], e[i], atol=1e-4) if i else a[i] == e[i] for i in part)
        kinds = ["old" if which(a, old) else "new" if which(a, new) else "mixed" for a in load.answers]
        assert "mixed" not in kinds and kinds[0] == "old" and kinds[-1] == "new"
        assert kinds == sorted(kinds, key=lambda k: k == "new")  # old answers, then new ones, never back
    with TwinBertClient(server.grpc_url) as c:
        health = c.health()["models"]
        assert all({"version": "1", "state": "READY"} not in health[m] for m in versions)
    retired = repo.with_name(repo.name + ".retired") / "query_encoder"
    assert sorted(p.name for p in retired.iterdir()) == ["1"] and not (repo / "query_encoder" / "1").exists()
    assert sorted(p.name for p in (repo / "query_encoder").iterdir()) == ["2", "config.pbtxt", "warmup"]  # nothing more
    assert _expected(InProcessPipeline(repo)) == new or _same(_expected(InProcessPipeline(repo)), new)


def _fail_the_second_ensemble_pin(monkeypatch) -> list:
    """Wrap pin_ensemble_text so that the second ensemble a swap pins names a version that does not
    exist (99): the first has switched when the second cannot. Returns the list of calls."""
    import serving.rollout as rollout_module
    real_pin, calls = rollout_module.pin_ensemble_text, []

    def pin_the_second_to_a_missing_version(text, versions):
        calls.append(1)
        return real_pin(text, {m: 99 for m in versions} if len(calls) == 2 else versions)
    monkeypatch.setattr(rollout_module, "pin_ensemble_text", pin_the_second_to_a_missing_version)
    return calls


def test_a_rollout_that_fails_mid_switch_puts_everything_back_under_load(live, tiny_export, tmp_path, build_repository,
                                                                         monkeypatch):
    """The first ensemble has switched to the new versions when the second cannot (its pinned config
    names a version that does not exist: a fault injected by wrapping pin_ensemble_text). The switched
    ensemble must go back and the new versions must go, with no failed request: every answer comes from
    the old or the new models, never a mix within one request. Before the pins were checked, the faulty
    ensemble was handed to Triton, which unloaded the serving one ("ensemble 'retrieve' depends on
    'keyword_store' whose required version 99 is not loaded") until the undoing reloaded it: in one CI
    run 3 requests failed with "'retrieve' has no available versions"."""
    import serving.rollout as rollout_module
    from serving.pipeline import InProcessPipeline
    from serving.repository import numbered_versions
    server, store, repo = live
    export2, store2, repo2 = _new_encoder(tmp_path, build_repository, 11)
    before = {name: text for name, text in rollout_module.ensembles(repo).items()}
    assert len(before) >= 2  # retrieve and relevance: the second one fails after the first switched
    calls = _fail_the_second_ensemble_pin(monkeypatch)
    old, new = _expected(InProcessPipeline(repo)), _expected(InProcessPipeline(repo2))
    with Recorder(server.grpc_url) as load:
        load.wait_for(3)
        with pytest.raises(rollout_module.RolloutError,
                           match="(?s)keyword_store version 99, which is not ready.*the previous versions keep serving"):
            rollout_module.rollout(repo, export2, store2, server.grpc_url)
        answered_during = len(load.answers)
        load.wait_for(load.ok + 5)
    assert load.failed == []
    for part in ((0, 1), (2,)):  # each request's answer is the old models' or the new ones', never a mix
        def same(a, e):
            return all(np.allclose(a[i], e[i], atol=1e-4) if i else a[i] == e[i] for i in part)
        assert all(same(a, old) or same(a, new) for a in load.answers)
    assert all(_same(a, old) for a in load.answers[answered_during:])  # the old encoder and index answer again
    assert rollout_module.ensembles(repo) == before  # the configs are as they were
    for m in rollout_module.ENCODER_MODELS:
        assert numbered_versions(repo / m) == [1]
    with TwinBertClient(server.grpc_url) as c:
        health = c.health()["models"]
        assert all({"version": "2", "state": "READY"} not in health[m] for m in rollout_module.ENCODER_MODELS)
    assert len(calls) == 2  # both ensembles were pinned: the first had switched when the second failed


def test_a_swap_cut_off_mid_switch_is_undone_by_the_next_one_under_load(live, tiny_export, monkeypatch, capsys):
    """A swap whose process dies after the first ensemble has switched (simulated: the fault of the test
    above, and an undoing that never runs) leaves one ensemble on the new versions and a record of the
    swap beside the repository; the next update undoes it first, then swaps, with no failed request."""
    import serving.rollout as rollout_module
    from serving.repository import numbered_versions
    server, store, repo = live
    before = rollout_module.ensembles(repo)

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed
    _fail_the_second_ensemble_pin(monkeypatch)
    monkeypatch.setattr(rollout_module, "_undo", killed)
    journal = repo.with_name(repo.name + ".retired") / rollout_module.JOURNAL
    with Load(server.grpc_url) as load:
        load.wait_for(3)
        with pytest.raises(Killed):
            publish(repo, build_updated_version(tiny_export, store, delete={"p1"}), server.grpc_url)
        assert journal.is_file() and rollout_module.ensembles(repo) != before  # one ensemble had switched
        assert numbered_versions(repo / "keyword_store") == [1, 2]
        monkeypatch.undo()
        load.wait_for(load.ok + 3)
        assert publish(repo, build_updated_version(tiny_export, store, delete={"t1"}), server.grpc_url) == 2
        load.wait_for(load.ok + 3)
    assert "an earlier swap was cut off before it had switched; it was undone" in capsys.readouterr().err
    assert load.failed == [] and not journal.exists()
    assert numbered_versions(repo / "keyword_store") == numbered_versions(repo / "keyword_vectors") == [2]
    with TwinBertClient(server.grpc_url) as c:
        for dropped in ("p1", "t1"):  # the second update was built on the first one's store version
            with pytest.raises(InvalidRequest, match=repr(dropped)):
                c.relevance("drill", [dropped])
        assert c.retrieve("cordless drill", 1)[0].keyword_id == "d1"


def test_a_swap_cut_off_after_switching_is_finished_under_load(live, monkeypatch):
    """Cut off after the last ensemble's config was pinned but before the server reloaded it (one
    ensemble still on the old versions), with the old versions not retired: recovery reloads the
    ensembles and retires the old versions, not undoing the swap, and no request fails."""
    import json
    import shutil

    import tritonclient.grpc as grpcclient

    import serving.rollout as rollout_module
    from serving.repository import numbered_versions
    server, store, repo = live
    before, new = rollout_module.ensembles(repo), {"keyword_store": 2, "keyword_vectors": 2}
    journal = repo.with_name(repo.name + ".retired") / rollout_module.JOURNAL
    journal.parent.mkdir()
    journal.write_text(json.dumps({"new": new, "ensembles": before}))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for m in new:  # the new versions (the old ones' files: answers stay the same) placed and loaded
        shutil.copytree(repo / m / "1", repo / m / "2")
        client.load_model(m)
    names = sorted(before)
    for name in names:
        (repo / name / "config.pbtxt").write_text(rollout_module.pin_ensemble_text(before[name], new))
    for name in names[:-1]:  # the process died before reloading the last
        client.load_model(name)
    with Load(server.grpc_url) as load:
        load.wait_for(3)
        assert "it was finished" in rollout_module.recover(repo, server.grpc_url)
        load.wait_for(load.ok + 3)
    assert load.failed == [] and not journal.exists()
    for m in new:
        assert numbered_versions(repo / m) == [2] and (journal.parent / m / "1").is_dir()  # retired
        assert client.is_model_ready(m, "2") and not client.is_model_ready(m, "1")
    client.close()
    assert rollout_module.ensembles(repo) == {n: rollout_module.pin_ensemble_text(t, new) for n, t in before.items()}


def test_a_cut_off_swap_is_left_as_it_is_while_the_server_is_unreachable_and_a_corrupt_record_refused(
        tiny_export, tmp_path, build_repository):
    import json

    import serving.rollout as rollout_module
    _, repo = build_repository(tiny_export, TITLES, tmp_path)
    journal = repo.with_name(repo.name + ".retired") / rollout_module.JOURNAL
    journal.parent.mkdir()
    before = rollout_module.ensembles(repo)
    journal.write_text(json.dumps({"new": {"keyword_store": 2}, "ensembles": before}))
    with pytest.raises(rollout_module.RolloutError, match="server is not reachable.*nothing was changed"):
        rollout_module.recover(repo, "127.0.0.1:9", timeout_s=2.0)
    assert journal.is_file() and rollout_module.ensembles(repo) == before
    with pytest.raises(StoreError, match="server is not reachable"):  # update_store's one-line error
        publish(repo, latest_version(tmp_path / "store"), "127.0.0.1:9")
    journal.write_text('{"new": ')
    with pytest.raises(rollout_module.RolloutError, match="unreadable record of an earlier swap"):
        rollout_module.recover(repo, "127.0.0.1:9")
