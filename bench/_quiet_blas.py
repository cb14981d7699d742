"""Imported by every bench script before numpy.

OpenBLAS's worker threads busy-wait for 2^28 cycles (about 0.1 s) after each call before they
sleep. Timed alternately with numpy, a multi-threaded iqkq call would share its cores with
that spinning worker (on 2 cores: 400 -> 300 GFLOPS for q8_0 at N=512, measured). The
shortest timeout (2^4 cycles) is read from the environment when numpy loads OpenBLAS.
An explicit setting in the environment wins.
"""
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
