#!/usr/bin/env bash
# The GPU checks of issues 6, 12, 15 and 28 in one call, within 10 minutes on one GPU: the CUDA
# tests (the compiled whole step as one CUDA graph among them), bench_images.py (bits per dimension
# of conv and resnet on the photos; memory and epoch time of 60,000 8-bit images on the device or
# streamed), bench_train.py (svi, svi-compiled, manual, manual-compiled, pyro-naive, numpyro where
# JAX's CUDA build is installed, and the floor, batch 256 and 1024, with cold and warm compile
# times) and bench_iwae.py (k = 5000 on 10,000 images, eager and compiled), their tables into $OUT.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh            # on a machine with a CUDA GPU
#   OUT=/tmp/check GPU_CHECK_DEVICE=cpu GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh   # a trial
#
# The lent GPU machine's python3 has torch but not pyro-ppl or pyro-api: put their wheels in .whl/
# (benchmarks/README.md says how) and they are installed to /tmp/site first. Fashion-MNIST is not
# there: the benchmarks time random 28x28 images, which take the same time.
set -uo pipefail
cd "$(dirname "$0")/.."
final=${OUT:-benchmarks/results}
out=$(mktemp -d)  # everything here; at the end the tables beside one archive of it all (8 files
                  # at most come back from the device machine)
device=${GPU_CHECK_DEVICE:-cuda}
py=${PYTHON:-python3}
mkdir -p "$final"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ -n "${GPU_CHECK_SMOKE:-}" ]; then  # a few steps of each, to try the script out
    train=(--max-steps 5 --epochs 2 --batch-sizes 64,256 --no-compile-times)
    iwae=(--num-images 20 --k 10 --scaling-k 1,5 --scaling-images 20 --repeats 1)
    images=(--epochs 1 --iwae-k 2 --memory-epochs 1 --memory-images 2000)
    tests=(tests/test_cuda.py)
else
    train=(--epochs 3 --batch-sizes 256,1024)
    iwae=(--num-images 10000 --k 5000 --scaling-k 1,10,100,1000 --scaling-images 2000)
    images=(--epochs 20 --iwae-k 100 --memory-epochs 2)
    tests=(tests/test_cuda.py tests/test_compiled.py -k "cuda or gpu or agrees or resumes")
fi
parts=${GPU_CHECK_PARTS:-tests images train iwae}  # a rerun may take some of them; "stream"
# (issue 29: a prepared copy streamed with pinned memory and workers) runs only when named
has() { [[ " $parts " == *" $1 "* ]]; }
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
if has tests; then
    timeout 90 $py -m pytest -q -p no:cacheprovider "${tests[@]}" > "$out/cuda-tests.log" 2>&1 \
        || status=1
    tail -n 3 "$out/cuda-tests.log"
fi
if has images; then
    timeout 130 $py benchmarks/bench_images.py --device "$device" --data random --compile off \
        --memory-data random "${images[@]}" --out "$out" > "$out/bench-images.log" 2>&1 || status=1
    tail -n 12 "$out/bench-images.log"
fi
if has train; then
    timeout 240 $py benchmarks/bench_train.py --device "$device" --data random "${train[@]}" \
        --out "$out" > "$out/bench-train.log" 2>&1 || status=1
fi
if has stream; then
    size=2; [ -n "${GPU_CHECK_SMOKE:-}" ] && size=0.05
    timeout 300 $py benchmarks/bench_stream.py --device "$device" --size-gb "$size" --stream \
        --workers 4 --limit-gb 4 --out "$out" > "$out/bench-stream.log" 2>&1 || status=1
    tail -n 8 "$out/bench-stream.log"
fi
if has iwae; then
    timeout 120 $py benchmarks/bench_iwae.py --device "$device" --data random "${iwae[@]}" \
        --out "$out" > "$out/bench-iwae.log" 2>&1 || status=1
fi
tail -n 4 "$out"/bench-*.log 2>/dev/null
ls "$out"
cp "$out"/*.md "$final"/ 2>/dev/null
tar czf "$final/gpu-check.tar.gz" -C "$out" .
exit $status
