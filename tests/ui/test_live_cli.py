"""`framepack ui` itself (a subprocess on the tiny golden models) through `gradio_client`: it binds 127.0.0.1 only,
runs a 2-section job to an MP4 under --save_path, and a second start on a busy port is one line, exit 3."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import INPUTS, MODEL_ARGS, REPO

pytestmark = [pytest.mark.ui, pytest.mark.slow]
pytest.importorskip("gradio", reason="the ui extra is not installed (pip install -e .[ui])")
from gradio_client import Client, handle_file  # noqa: E402

from tests.ui.live import serve_cli  # noqa: E402


def listening(port: int) -> list[str]:
    """The local addresses listening on `port` (from /proc/net/tcp and tcp6), as hex strings."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if int(hexport, 16) == port and state == "0A":  # LISTEN
                found.append(addr)
    return found


def test_framepack_ui_binds_loopback_and_generates_a_video(tmp_path):
    save = tmp_path / "out"
    with serve_cli(save) as (url, proc):
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        assert url.startswith("http://127.0.0.1:")
        assert listening(port) == ["0100007F"]  # 127.0.0.1 only, no 0.0.0.0 / ::
        c = Client(url, verbose=False)
        job_id, status = c.predict(handle_file(str(INPUTS / "start.png")), "A cat walks on the grass.", "",
                                   "sections", 5, 2, False, None, 42, 2, 10, 9, "48x64", "off",
                                   "fixed", "", [], {}, {}, api_name="/submit_generate")
        assert status.startswith(f"Queued job {job_id} (seed 42;")
        end = time.time() + 240
        line = ""
        while time.time() < end:
            line, preview, video = c.predict(job_id, api_name="/job_status")
            if f"Job {job_id}: done" in line or "failed" in line:
                break
            time.sleep(0.5)
        assert line.startswith(f"Job {job_id}: done"), line
        assert preview and Path(preview).read_bytes()[:4] == b"\x89PNG"
        mp4s = sorted(save.glob("*_42_*.mp4"))
        assert len(mp4s) == 1 and mp4s[0].read_bytes()[4:8] == b"ftyp"
        assert not list(save.glob(".*.resume.safetensors"))  # removed once the video was written
        # the outputs gallery, the settings read from the MP4's metadata, and "load these settings"
        (item,) = c.predict(api_name="/outputs_list")  # the gallery: one video
        assert Path(item["video"]).name == mp4s[0].name
        text = c.predict(str(mp4s[0]), api_name="/output_settings")
        assert f"**{mp4s[0].name}** (`framepack generate`)" in text and "- seed: `42`" in text
        assert "- video_size: `48 x 64`" in text and "- video_sections: `2`" in text and "infer_steps: `2`" in text
        loaded = c.predict(str(mp4s[0]), api_name="/load_settings")
        assert loaded[0] is not None and Path(loaded[0]).read_bytes() == (INPUTS / "start.png").read_bytes()
        assert list(loaded[1:14]) == ["A cat walks on the grass.", "", "sections", 5.0, 2, False, None, 42, 2, 10.0,
                                      9, "48x64", "off"]
        assert list(loaded[14:19]) == ["fixed", "", [], {}, {"prompts": {}, "images": {}}]
        assert loaded[-1] == f"Loaded the settings of {mp4s[0].name}"
        for outside in ("/etc/passwd", str(save / ".." / "x.mp4")):
            assert c.predict(outside, api_name="/output_settings").startswith("**Error:** file: ")
        # a bad value refused by the Pipeline's own validation, before queueing: one line
        _, status = c.predict(None, "a||b", "", "sections", 5, 2, False, None, 1, 2, 10, 9, "48x64", "off",
                              "fixed", "", [], {}, {}, api_name="/submit_generate")
        assert status == "**Error:** --prompt: empty entry 2 in 'a||b' (one entry per section, separated by |)"

        # the same port again: one line, exit 3
        busy = subprocess.run([sys.executable, "-m", "framepack_cli", "ui", *MODEL_ARGS, "--port", str(port),
                               "--save_path", str(tmp_path / "other")], capture_output=True, text=True, cwd=REPO,
                              timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                                "GRADIO_ANALYTICS_ENABLED": "False",
                                                "HF_HUB_OFFLINE": "1"})
        assert busy.returncode == 3, busy.stderr
        assert busy.stderr.strip().splitlines()[-1] == (
            f"Error: --port {port}: the port is in use on 127.0.0.1; stop what uses it or pick another with --port N")

        # Ctrl-C stops the app: exit 0, nothing more on stdout (it carried the URL only), one line on stderr
        import signal

        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert proc.stdout.read() == ""
        assert proc.stderr_text().strip().splitlines()[-1] == (
            f"Stopped; 0 waiting job(s) and the finished ones stay in {save / '.framepack-ui' / 'queue.json'} for "
            "the next `framepack ui`")


def wait_line(c: Client, job_id: str, want, timeout: float = 240) -> str:
    end = time.time() + timeout
    line = ""
    while time.time() < end:
        line = c.predict(job_id, api_name="/job_status")[0]
        if want(line):
            return line
        time.sleep(0.3)
    raise AssertionError(f"job {job_id}: {line}")


def test_a_job_cut_off_by_a_crash_resumes_from_its_last_section_after_a_restart(tmp_path):
    save = tmp_path / "out"
    with serve_cli(save) as (url, proc):
        c = Client(url, verbose=False)
        job_id, _ = c.predict(handle_file(str(INPUTS / "start.png")), "A cat walks on the grass.", "", "sections", 5,
                              2, False, None, 7, 16, 10, 9, "48x64", "off", "fixed", "", [], {}, {},
                              api_name="/submit_generate")
        wait_line(c, job_id, lambda s: "section 2/2" in s)  # the first section is done and checkpointed
        proc.kill()  # a crash: nothing is cleaned up
        proc.wait(10)
    assert list(save.glob(".*.resume.safetensors")) and not list(save.glob("*.mp4"))
    with serve_cli(save) as (url, proc):
        c = Client(url, verbose=False)
        line = c.predict(job_id, api_name="/job_status")[0]
        assert line == (f"Job {job_id}: interrupted (the app stopped while this job ran; Resume continues from its "
                        "last complete section)")
        msg, table = c.predict(job_id, api_name="/resume_job")
        assert msg == f"Job {job_id}: queued again; continues from its last complete section"
        line = wait_line(c, job_id, lambda s: "done" in s or "failed" in s)
        assert line.startswith(f"Job {job_id}: done"), line
    mp4s = sorted(save.glob("*_7_*.mp4"))
    assert len(mp4s) == 1 and not list(save.glob(".*.resume.safetensors"))


def editor(path, layers=()):
    """An ImageEditor value as gradio_client sends it: the image and the painted layers."""
    return {"background": handle_file(str(path)), "layers": [handle_file(str(p)) for p in layers],
            "composite": handle_file(str(path))}


def test_one_frame_recipes_with_a_painted_mask(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    layer = tmp_path / "paint.png"  # the left half painted
    paint = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    paint.paste((255, 0, 0, 255), (0, 0, 32, 48))
    paint.save(layer)
    save = tmp_path / "out"
    with serve_cli(save) as (url, _proc):
        c = Client(url, verbose=False)
        ids = {}
        for recipe, second in (("Kisekaeichi", editor(INPUTS / "ref_rgba.png")),
                               ("1f-mc", editor(INPUTS / "ctrl2.png", [layer])), ("One-frame", None)):
            job_id, status = c.predict(recipe, editor(INPUTS / "start.png", [layer]), second, "a cat", "", 42, 2,
                                       "48x64", [], {}, api_name="/submit_one_frame")
            assert status == f"Queued job {job_id} ({recipe}, seed 42)"
            ids[recipe] = job_id
        for recipe, job_id in ids.items():
            end, line, image = time.time() + 120, "", None
            while time.time() < end:
                line, image = c.predict(job_id, api_name="/one_frame_status")
                if "done" in line or "failed" in line:
                    break
                time.sleep(0.3)
            assert line.startswith(f"Job {job_id}: done"), (recipe, line)
            assert Image.open(image).size == (64, 48)
        _, status = c.predict("1f-mc", editor(INPUTS / "start.png"), None, "x", "", 1, 2, "48x64", [], {},
                              api_name="/submit_one_frame")
        assert status == "**Error:** Second image: 1f-mc needs a second control image"
    jobs = {j["id"]: j for j in json.loads((save / ".framepack-ui" / "queue.json").read_text())["jobs"]}
    kis = jobs[ids["Kisekaeichi"]]
    assert kis["kind"] == "kisekae" and "reference_mask" not in kis["options"]  # nothing painted on it
    mask = np.asarray(Image.open(kis["options"]["start_mask"]))
    assert mask.shape == Image.open(INPUTS / "start.png").size[::-1]
    w = mask.shape[1]
    assert (mask[:, : w // 2 - 2] == 255).all() and (mask[:, w // 2 + 2:] == 0).all()
    mc = jobs[ids["1f-mc"]]["options"]
    assert mc["one_frame_inference"] == "target_index=9,control_index=0;1,no_2x,no_4x" and len(mc["control_masks"]) == 2
    assert all(Path(p).parent == save / ".framepack-ui" / "uploads" for p in mc["control_masks"] + mc["control_images"])
    pngs = sorted(save.glob("*.png"))
    assert len(pngs) == 3  # one edited image per job, under --save_path


def test_loras_from_the_folder_a_broken_one_and_f1_with_its_own_dit(tmp_path):
    import shutil

    from tests.conftest import MODELS

    loras = tmp_path / "loras"
    loras.mkdir()
    shutil.copy(MODELS / "lora_tiny.safetensors", loras / "tiny.safetensors")
    (loras / "broken.safetensors").write_bytes(b"not a safetensors file" * 8)
    save = tmp_path / "out"
    with serve_cli(save, "--lora_dir", str(loras), "--f1_dit", str(MODELS / "dit_sharded")) as (url, _proc):
        c = Client(url, verbose=False)
        form = [handle_file(str(INPUTS / "start.png")), "a cat", "", "sections", 5, 1, False, None, 3, 1, 10, 9,
                "48x64", "off", "fixed", "", [], {}, {}]
        ids = {}
        for name, f1, picked in (("lora", False, ["tiny.safetensors"]), ("broken", False, ["broken.safetensors"]),
                                 ("f1", True, [])):
            values = list(form)
            values[6], values[16], values[17] = f1, picked, {p: 0.5 for p in picked}
            ids[name], status = c.predict(*values, api_name="/submit_generate")
            assert status.startswith(f"Queued job {ids[name]}"), status
        lines = {name: wait_line(c, jid, lambda s: "done" in s or "failed" in s) for name, jid in ids.items()}
    assert lines["lora"].startswith(f"Job {ids['lora']}: done") and lines["f1"].startswith(f"Job {ids['f1']}: done")
    broken = (loras / "broken.safetensors").resolve()
    assert lines["broken"].startswith(f"Job {ids['broken']}: failed ({broken}: not a safetensors file")
    assert "Traceback" not in lines["broken"] and "\n" not in lines["broken"]
    from framepack_cli.cli.rerun import stored_run

    done = {}
    for mp4 in save.glob("*.mp4"):
        o = stored_run(str(mp4))["options"]
        done[bool(o.get("f1"))] = o
    assert done[False]["lora_weight"] == [str((loras / "tiny.safetensors").resolve())]
    assert done[False]["lora_multiplier"] == [0.5]
    assert done[True]["dit"] == str(MODELS / "dit_sharded") and not done[True].get("lora_weight")
