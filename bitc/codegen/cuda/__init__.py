"""The CUDA target: emitters of the bitc ops (scheduled TE kernels, 1-bit tensor-core mma), GPU schedules, and the
builder that compiles the kernels with nvcc ahead of time."""
