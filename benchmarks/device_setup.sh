#!/usr/bin/env bash
# Source this on a lent GPU machine (Python 3.12 and torch there, no internet) before a benchmark:
# installs the wheels carried in .whl/ (pyro-ppl and its small dependencies, and this package,
# built here with `pip wheel --no-deps -w .whl .`) into /tmp/pydeps (replacing what an earlier call
# left there) and puts them on PYTHONPATH; the check imports from /tmp, not the checkout.
# The wheels, fetched on a machine with the package index (arviz from the 0.x line: 1.x needs
# arviz_base):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform any -d .whl pyro-ppl pyro-api opt-einsum \
#     "arviz>=0.20,<1" h5netcdf xarray-einstats platformdirs
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/pydeps
pip install -q --no-index --no-deps --upgrade --target /tmp/pydeps .whl/*.whl
(cd /tmp && python -c "import pyro, pyro_dwp.models, torch; print('torch', torch.__version__, 'pyro', pyro.__version__, 'gpus', torch.cuda.device_count())")
