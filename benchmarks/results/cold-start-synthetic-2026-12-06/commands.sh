#!/bin/sh
# Cold start on the synthetic set: a seq run with 10% of the users held out of training, then
# `evaluate` (leave-one-out metrics, and the held-out users' metrics beside popularity's).
# Machine: 2-core Intel Xeon VM (AVX2, AVX-512), no GPU, shared with other jobs; torch 2.13.0+cpu;
# 2026-12-06, branch coldstart. 4 epochs, not the paper's 20: an epoch took 85-270 s on the shared
# cores and the 20-epoch run did not fit the session.
neumf-fast train --model seq --dataset synthetic --new-users 0.1 --epochs 4 --out runs/seq-new --no-progress
neumf-fast evaluate runs/seq-new > seq-new-users-evaluate.json
