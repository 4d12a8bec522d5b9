"""Executed by VBench's own Python (never imported by anyflow): standard-mode VBench on a folder of mp4s.

    <vbench python> vbench_runner.py VIDEOS_DIR OUT_DIR NAME DIM [DIM ...]

Imports only vbench and the standard library, so it runs in VBench's pinned environment."""

import os
import sys

import torch
import vbench
from vbench import VBench

videos, out, name, *dims = sys.argv[1:]
full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VBench(device, full_info, out).evaluate(videos_path=videos, name=name, dimension_list=dims, local=True)
