"""bitc's code generator: an ONNX model (bitc ops included) → one shared library for a CPU or CUDA target.

The stages, in the order `build.build` runs them:
1. import (`relax_import`, `onnx_support`): standard ops through TVM's ONNX importer, each bitc node through its
   emitter for the target (`registry`), into one Relax module;
2. lower (`relax`, shared by both targets; `cpu.nchwc` blocked layouts on CPUs): legalize to TIR with bitc's
   NaN-keeping and cached legalizations, fold constants, fuse;
3. schedule: the bitc kernels' own schedules (`registry`), then default rules (`cpu.schedules`, dlight's GPU rules
   on CUDA), or MetaSchedule records (`cpu.tuning`);
4. compile and export: LLVM for CPUs; on CUDA also nvcc, ahead of time (`cuda.build`).

`target` names the machine, `kernels` holds the TE / TVMScript computes both targets share, `cpu` and `cuda`
the per-target emitters, schedules and builders.
"""
