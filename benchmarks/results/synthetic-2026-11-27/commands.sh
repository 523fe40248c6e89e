#!/bin/bash
# README quality table: paper defaults on the synthetic dataset
set -e
# run from the repository root after `bash dev.sh test` (or with the venv active)
. .venv/bin/activate
R=runs/syn
neumf-fast train --model gmf --out $R/gmf --no-progress
neumf-fast train --model mlp --out $R/mlp --no-progress
neumf-fast train --model neumf --out $R/neumf --no-progress
neumf-fast train --model neumf --pretrain $R/gmf/best.pt $R/mlp/best.pt --out $R/neumf_pre --no-progress
neumf-fast train --model seq --out $R/seq --no-progress
neumf-fast train --model neumf --pretrain $R/gmf/best.pt $R/mlp/best.pt --optimizer adam --out $R/neumf_pre_adam --no-progress
