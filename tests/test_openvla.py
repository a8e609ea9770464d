"""OpenVLA: action tokenizer, LIBERO preprocessing, the in-process policy on a tiny random
Llava-style checkpoint built offline, the deploy-server client, and the missing-weights path."""

from __future__ import annotations

import base64
import http.server
import importlib.util
import json
import threading

import gymnasium as gym
import numpy as np
import pytest

from harness.errors import HarnessError
from policies import EnvInfo, make_policy
from policies.action_tokenizer import ActionStats, ActionTokenizer, resolve_unnorm_key
from policies.openvla import center_crop_resize, postprocess_gripper, preprocess_image
from policies.openvla_server import dumps, loads
from tests.conftest import requires_metaworld, run_cli

HAS_MODELS = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "tokenizers", "safetensors"))
requires_models = pytest.mark.skipif(not HAS_MODELS, reason='torch/transformers not installed: pip install -e ".[models]"')

C = 1.0 / 255.0  # half a bin: bin centres sit at -1 + (2k + 1) / 255
# q01/q99 chosen so that un-normalising is n + 0.5 on the six masked dimensions
Q01, Q99, MASK = [-0.5] * 6 + [0.0], [1.5] * 6 + [1.0], [True] * 6 + [False]
LIBERO_STATS = {"libero_spatial_no_noops": {"action": {"q01": Q01, "q99": Q99, "mask": MASK}}}
BRIDGE_STATS = {"bridge_orig": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]}}}
BASE_VOCAB, PAD, IMAGE_TOKEN = 1000, 64, 1000  # text vocab 1064 = 1000 + padding, as OpenVLA's 32000 + 64


def env_info(env_id: str = "libero/libero_spatial/0", family: str = "libero", dim: int = 7,
             cameras: tuple[str, ...] = ("agentview",)) -> EnvInfo:
    return EnvInfo(env_id=env_id, family=family, task=env_id.split("/", 1)[1], instruction="pick up the black bowl",
                   action_space=gym.spaces.Box(-1.0, 1.0, (dim,), np.float32), cameras=cameras, image_size=256)


# --- (1) the action tokenizer -----------------------------------------------------------------

def test_known_token_ids_decode_to_known_actions():
    tok = ActionTokenizer(vocab_size=32000)  # Llama-2's vocabulary, as OpenVLA
    assert tok.token_ids == range(31744, 32000)
    ids = np.array([31872, 31999, 31744, 31871, 31873, 31800, 31744])
    normalized = tok.decode(ids)
    np.testing.assert_allclose(normalized, [0.0, -1 + C, 1 - C, 2 * C, -2 * C, 144 * C, 1 - C], atol=1e-12)
    stats = ActionStats.from_dict({"q01": Q01, "q99": Q99, "mask": MASK})
    actions = stats.unnormalize(normalized)
    np.testing.assert_allclose(actions, [0.5, -0.5 + C, 1.5 - C, 0.5 + 2 * C, 0.5 - 2 * C, 0.5 + 144 * C, 1 - C], atol=1e-12)
    # LIBERO's gripper: 1 - 1/255 (open in the model's 0..1) -> sign(2g - 1) = +1 -> inverted -1
    assert postprocess_gripper(actions, "binarize_invert")[-1] == -1.0
    assert postprocess_gripper(np.array([0.0] * 6 + [0.2]), "binarize_invert")[-1] == 1.0
    assert postprocess_gripper(actions, "raw")[-1] == actions[-1]


def test_encode_decode_round_trip_and_edges():
    tok = ActionTokenizer(vocab_size=32000)
    assert tok.encode(np.array([0.0, 1.0, -1.0, 5.0, -5.0])).tolist() == [31872, 31744, 31999, 31744, 31999]
    a = np.random.default_rng(0).uniform(-1, 1, (1000, 7))
    ids = tok.encode(a)
    assert ids.min() >= 31744 and ids.max() <= 31999
    assert np.abs(tok.decode(ids) - a).max() <= C + 1e-12  # within half a bin
    np.testing.assert_array_equal(tok.encode(tok.decode(ids)), ids)  # bin centres are fixed points
    assert tok.decode(np.array([0, 32005])).tolist() == [1 - C, -1 + C]  # out-of-range ids clip to the ends
    stats = ActionStats.from_dict({"q01": Q01, "q99": Q99, "mask": MASK})
    x = np.array([0.1, -0.4, 1.2, 0.0, 0.7, 1.49, 0.3])
    np.testing.assert_allclose(stats.unnormalize(stats.normalize(x)), x, atol=1e-7)


def test_unnorm_key_resolution():
    stats = {**LIBERO_STATS, **BRIDGE_STATS}
    assert resolve_unnorm_key(stats, "libero_spatial", "ckpt") == "libero_spatial_no_noops"
    assert resolve_unnorm_key(stats, "bridge_orig", "ckpt") == "bridge_orig"
    assert resolve_unnorm_key(BRIDGE_STATS, None, "ckpt") == "bridge_orig"
    with pytest.raises(HarnessError, match="pick one with unnorm_key"):
        resolve_unnorm_key(stats, None, "ckpt")
    with pytest.raises(HarnessError, match="Did you mean 'bridge_orig'"):
        resolve_unnorm_key(stats, "bridge_orgi", "ckpt")


# --- (2) LIBERO preprocessing -----------------------------------------------------------------

def test_center_crop_matches_hand_computed_pixels():
    ramp = np.broadcast_to(np.arange(224, dtype=np.uint8)[None, :, None], (224, 224, 3)).copy()
    out = center_crop_resize(ramp, 0.9, 224)
    side = np.sqrt(0.9)  # the crop keeps 90 % of the area: 94.87 % of each side
    pos = (1 - side) / 2 * 223 + np.arange(224) * side  # where output column j samples the ramp
    expected = np.floor(pos / 255 * 255.5).astype(np.uint8)  # bilinear on a ramp is exact; TF's uint8 cast
    assert out[0, 0, 0] == 5 and out[0, -1, 0] == 217  # (1 - 0.94868) / 2 * 223 = 5.72; 5.72 + 223 * 0.94868 = 217.28
    np.testing.assert_array_equal(out[..., 0], np.broadcast_to(expected, (224, 224)))
    assert np.all(out[:, :, 0] == out[:, :, 1])
    flat = np.full((256, 256, 3), 77, np.uint8)
    assert np.array_equal(center_crop_resize(flat[:224, :224]), flat[:224, :224])  # a constant stays constant


def test_libero_preprocessing_keeps_upright_images_upright():
    img = np.zeros((256, 256, 3), np.uint8)
    img[:96, :96] = 255  # a white block top-left, as a person sees the scene
    img[200:, 200:, 0] = 200  # a red block bottom-right
    out = preprocess_image(img, center_crop=True)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # the harness's images are already upright = what the LIBERO fine-tunes saw (raw render rotated 180 degrees)
    assert out[:40, :40].mean() > 240 and out[-40:, -40:].mean() < 100
    assert out[-20:, -20:, 0].mean() > 150 and out[-20:, -20:, 1].mean() < 40
    # the crop zooms in: the block covers columns 0..84 at 224 px (96 * 224/256); the crop starts at
    # column 5.72 and magnifies by 1/0.9487, leaving (84 - 5.72) / 0.9487 = 82.5 px
    row = out[20, :, 1]
    assert int((row > 128).sum()) in (82, 83)
    no_crop = preprocess_image(img, center_crop=False)
    assert int((no_crop[20, :, 1] > 128).sum()) == 84


# --- a tiny Llava-style OpenVLA checkpoint, built offline -------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    if not HAS_MODELS:
        pytest.skip('torch/transformers not installed: pip install -e ".[models]"')
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        PreTrainedTokenizerFast,
        SiglipVisionConfig,
    )

    folder = tmp_path_factory.mktemp("openvla_tiny")
    # A Llama-style tokenizer: SentencePiece word boundaries, byte fallback, BOS prepended.
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    corpus = ["In: What action should the robot take to pick up the black bowl and place it on the plate?\nOut:",
              "open the top drawer of the cabinet", "put the cream cheese in the bowl"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                                        initial_alphabet=["\u2581"], show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)

    config = LlavaConfig(
        vision_config=SiglipVisionConfig(image_size=224, patch_size=16, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2),
        text_config=LlamaConfig(vocab_size=BASE_VOCAB + PAD, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512),
        image_token_id=IMAGE_TOKEN, vision_feature_select_strategy="full", vision_feature_layer=-1, image_seq_length=196,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(n_action_bins=256, pad_to_multiple_of=PAD, norm_stats=BRIDGE_STATS)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "dataset_statistics.json").write_text(json.dumps(LIBERO_STATS))  # as a fine-tune writes it
    (folder / "preprocessor_config.json").write_text(json.dumps({  # Prismatic's format, one backbone
        "image_processor_type": "PrismaticImageProcessor", "image_resize_strategy": "resize-naive",
        "input_sizes": [[3, 224, 224]], "interpolations": ["bicubic"], "use_fused_vision_backbone": False,
        "means": [[0.5, 0.5, 0.5]], "stds": [[0.5, 0.5, 0.5]],
        "tvf_normalize_params": [{"mean": [0.484375, 0.455078125, 0.40625], "std": [0.228515625, 0.2236328125, 0.224609375], "inplace": False}],
    }))
    return folder


@pytest.fixture
def one_thread():
    """Two threads on a shared 2-core machine thrash (1.6 s vs 15 ms per forward of the tiny model)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def observation(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"pixels": {"agentview": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)}, "state": np.zeros(9, np.float32)}


@requires_models
def test_policy_generates_seven_action_tokens_and_decodes_them(checkpoint, one_thread):
    import torch

    from policies.openvla import load_checkpoint, pixel_values, read_pixel_transforms

    policy = make_policy(f"openvla:path={checkpoint},device=cpu", env_info())
    assert policy.unnorm_key == "libero_spatial_no_noops"  # from the env's suite, with the _no_noops fallback
    assert policy.tokenizer_actions.token_ids == range(744, 1000)
    policy.reset("Pick up the black bowl")
    ids = policy._prompt_ids
    _, tokenizer = load_checkpoint(str(checkpoint), "cpu", "float32", "harness")
    assert ids[0] == tokenizer.bos_token_id and ids[1:197] == [IMAGE_TOKEN] * 196
    assert ids[-1] == tokenizer.convert_tokens_to_ids("\u2581")  # the space that followed "Out:" in training
    assert tokenizer.decode(ids[197:]).strip().startswith("In: What action should the robot take to pick up the black bowl?")

    obs = observation()
    action = policy.act(obs)
    token_ids = policy.last_token_ids
    assert action.dtype == np.float32 and action.shape == (7,)
    assert len(token_ids) == 7 and all(744 <= t < 1000 for t in token_ids)
    # de-tokenise by hand: id -> bin index 999 - id -> centre -1 + (2k + 1)/255 -> n + 0.5
    k = np.clip(999 - token_ids, 0, 254)
    n = -1 + (2 * k + 1) / 255
    expected = np.concatenate([n[:6] + 0.5, [-np.sign(2 * n[6] - 1)]])
    np.testing.assert_allclose(action, np.clip(expected, -1, 1).astype(np.float32))
    # the first token is the arg-max over the action ids of an independent forward pass
    model, _ = load_checkpoint(str(checkpoint), "cpu", "float32", "harness")
    image = preprocess_image(obs["pixels"]["agentview"], center_crop=True)
    pixels = torch.from_numpy(pixel_values(image, read_pixel_transforms(checkpoint)))[None]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), pixel_values=pixels).logits[0, -1]
    assert token_ids[0] == 744 + int(logits[744:1000].argmax())
    np.testing.assert_array_equal(policy.act(obs), action)  # greedy: deterministic


@requires_models
def test_pixel_normalisation_uses_the_serialised_parameters(checkpoint):
    from policies.openvla import pixel_values, read_pixel_transforms

    transforms = read_pixel_transforms(checkpoint)
    assert len(transforms) == 1 and transforms[0].mean == (0.484375, 0.455078125, 0.40625)
    x = pixel_values(np.full((224, 224, 3), 255, np.uint8), transforms)
    assert x.shape == (3, 224, 224)
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.484375) / 0.228515625, (1 - 0.455078125) / 0.2236328125, (1 - 0.40625) / 0.224609375], rtol=1e-6)


@requires_models
def test_construction_checks(checkpoint, tmp_path):
    with pytest.raises(HarnessError, match="outputs 7-D actions .* takes 4-D"):
        make_policy(f"openvla:path={checkpoint},device=cpu", env_info("metaworld/reach-v3", "metaworld", 4))
    with pytest.raises(HarnessError, match="pick one with unnorm_key"):  # two datasets' statistics, no suite to choose by
        make_policy(f"openvla:path={checkpoint},device=cpu,family=bridge", env_info("calvin/open_drawer", "calvin"))
    bridge = make_policy(f"openvla:path={checkpoint},device=cpu,family=bridge,unnorm_key=bridge_orig", env_info("calvin/x", "calvin"))
    assert bridge.stats.q01.tolist() == [-1.0] * 7 and bridge.setup.center_crop is False
    with pytest.raises(HarnessError, match="camera 'wrist' is not rendered"):
        make_policy(f"openvla:path={checkpoint},device=cpu,camera=wrist", env_info())
    with pytest.raises(HarnessError, match="backend=remote_code needs OpenVLA's own code"):
        make_policy(f"openvla:path={checkpoint},device=cpu,backend=remote_code", env_info())
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(HarnessError, match="device=cuda but PyTorch sees no CUDA GPU"):
            make_policy(f"openvla:path={checkpoint},device=cuda", env_info())
    empty = tmp_path / "no_weights"
    empty.mkdir()
    for name in ("config.json", "preprocessor_config.json", "dataset_statistics.json"):
        (empty / name).write_text((checkpoint / name).read_text())
    with pytest.raises(HarnessError, match="holds no weights"):
        make_policy(f"openvla:path={empty},device=cpu", env_info())


# --- (5) missing weights ----------------------------------------------------------------------

def test_missing_weights_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(HarnessError) as err:
        make_policy("openvla:path=/nope", env_info())
    assert "'/nope' does not exist" in str(err.value) and "hf download" in str(err.value) and "\n" not in str(err.value)
    import policies.openvla as ov

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(HarnessError) as err:  # no path: the suite's published fine-tune, looked for in the HF cache
        ov.OpenVLAPolicy(env_info(), device="cpu")
    msg = str(err.value)
    assert "'openvla/openvla-7b-finetuned-libero-spatial' are not in the Hugging Face cache" in msg
    assert "hf download openvla/openvla-7b-finetuned-libero-spatial" in msg and "\n" not in msg


@requires_metaworld
def test_cli_missing_weights_fails_before_any_simulator(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("eval", "--env", "metaworld/reach-v3", "--policy", "openvla:path=/nope", "--out", str(out), "--no-progress",
                   timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "/nope" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()  # nothing was written: validation happened at the edge


# --- (4) the deploy-server client -------------------------------------------------------------

class FakeDeployServer(http.server.BaseHTTPRequestHandler):
    """OpenVLA's deploy protocol: POST /act, json_numpy payload {image, instruction, unnorm_key}
    (or {"encoded": str}), answer the un-normalised action, or "error" when the request is bad.
    The action is a known function of the request, so the client's round trip can be checked."""

    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        from numpy.lib.format import descr_to_dtype

        def hook(d):  # json_numpy's object hook, written independently of the client's
            if "__numpy__" in d:
                return np.frombuffer(base64.b64decode(d["__numpy__"]), descr_to_dtype(d["dtype"])).reshape(d["shape"])
            return d

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])), object_hook=hook)
        double = "encoded" in body
        if double:
            body = json.loads(body["encoded"], object_hook=hook)
        image, instruction = body["image"], body["instruction"]
        type(self).seen.append(body)
        if self.path != "/act":
            self.send_error(404)
            return
        if body.get("unnorm_key") == "missing":
            answer = "error"
        else:  # action = (mean pixel / 255, instruction length / 100, 0, 0, 0, 0, gripper 0.9)
            action = np.array([image.mean() / 255.0, len(instruction) / 100.0, 0, 0, 0, 0, 0.9])
            encoded = {"__numpy__": base64.b64encode(action.tobytes()).decode(), "dtype": "<f8", "shape": [7]}
            answer = json.dumps(encoded) if double else encoded
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeDeployServer)
    FakeDeployServer.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_server_client_round_trip(server):
    policy = make_policy(f"openvla_server:url={server}/act", env_info())
    assert policy.setup.unnorm_key == "libero_spatial" and policy.setup.center_crop is True
    policy.reset("Pick up the black bowl")
    obs = observation(3)
    action = policy.act(obs)
    sent = FakeDeployServer.seen[-1]
    expected_image = preprocess_image(obs["pixels"]["agentview"], center_crop=True)
    assert sent["image"].dtype == np.uint8 and sent["image"].shape == (224, 224, 3)
    np.testing.assert_array_equal(sent["image"], expected_image)  # the family's preprocessing, done client-side
    assert sent["instruction"] == "Pick up the black bowl" and sent["unnorm_key"] == "libero_spatial"
    # gripper 0.9 (open in the model's 0..1) -> LIBERO's -1
    np.testing.assert_allclose(action, [expected_image.mean() / 255.0, 0.22, 0, 0, 0, 0, -1.0], rtol=1e-6)
    assert action.dtype == np.float32

    raw = policy.request({"encoded": dumps(policy.payload(obs))})
    np.testing.assert_allclose(raw, [expected_image.mean() / 255.0, 0.22, 0, 0, 0, 0, 0.9])  # double-encoded answer

    bad = make_policy(f"openvla_server:url={server}/act,unnorm_key=missing", env_info())
    bad.reset("x")
    with pytest.raises(HarnessError, match="answered 'error'"):
        bad.act(obs)
    wrong = make_policy(f"openvla_server:url={server}/predict", env_info())
    wrong.reset("x")
    with pytest.raises(HarnessError, match="HTTP 404"):
        wrong.act(obs)


def test_server_client_validates_at_the_edge(server):
    with pytest.raises(HarnessError, match="not an http"):
        make_policy("openvla_server:url=ftp://x/act", env_info())
    with pytest.raises(HarnessError, match="outputs 7-D actions"):
        make_policy(f"openvla_server:url={server}/act", env_info("metaworld/reach-v3", "metaworld", 4))
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HarnessError, match="cannot reach the OpenVLA server"):
        make_policy(f"openvla_server:url=http://127.0.0.1:{port}/act", env_info())


def test_client_encoding_matches_json_numpy():
    json_numpy = pytest.importorskip("json_numpy", reason="json-numpy not installed (only this cross-check needs it)")
    payload = {"image": np.arange(24, dtype=np.uint8).reshape(2, 4, 3), "instruction": "x", "a": np.float32(1.5)}
    theirs = json_numpy.loads(dumps(payload))
    np.testing.assert_array_equal(theirs["image"], payload["image"])
    assert theirs["a"] == np.float32(1.5)
    ours = loads(json_numpy.dumps(payload))
    np.testing.assert_array_equal(ours["image"], payload["image"])
    assert ours["image"].dtype == np.uint8 and ours["a"] == np.float32(1.5)


def test_shipped_example_config_parses():
    from pathlib import Path

    from harness.run.config import EvalConfig
    from policies import parse_policy_spec

    cfg = EvalConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "policies" / "openvla_libero.yaml")
    assert cfg.image_size == 256 and cfg.episodes == 50
    spec = parse_policy_spec(cfg.policies[0])
    assert spec.name == "openvla" and spec.params["center_crop"] is True and spec.params["unnorm_key"] == "libero_spatial"
