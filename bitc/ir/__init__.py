"""onnx-ir helpers that the frontend, the passes and codegen share, one job per module: `graph_edit` (read, add
and reroute values; Constant nodes' tensor form), `shapes` (shape inference, a graph input's static shape) and
`feeds` (seeded random inputs). Nothing here imports the frontend, the passes or codegen; only `bitc.ops` (its
shape rules), `bitc.errors` and the runtime (`random_array`) from below."""
