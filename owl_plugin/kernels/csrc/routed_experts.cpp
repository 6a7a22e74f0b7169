// owl-plugin: routed SwiGLU experts over packed matrices, the whole per-expert loop in C++.
//
// For token t routed to experts e_1..e_k with router weights w_t1..w_tk (Mixtral of Experts, Jiang et al. 2024,
// §2.1):  y_t = sum_j w_tj * down_{e_j}( silu(gate_{e_j} x_t) * up_{e_j} x_t ),  gate and up stacked into one
// [2I, H] matrix per expert (gate rows first), down [H, I]. owl_plugin/kernels/experts.py states the same and
// keeps a pure-torch twin of this loop for machines without the extension.
//
// Why C++: a decode step routes a few tokens to each of k experts, so each expert's two matrix products are small
// (Qwen3-30B-A3B: 2 x 1.5 M weights at 1 token). Run from Python, the step around them (gather, the two
// sparse_linear calls, SiLU, weighting, index_add) cost about as much as the products: 2.9 ms per layer at 1 token
// against 1.6 ms for the products alone (8 experts, 2 threads, AMD EPYC). Here each step is one ATen call.
//
// Grouping: one counting sort of the (token, slot) pairs by expert id; negative ids (experts held by another rank)
// are skipped; an id >= E raises, naming it.
#include <torch/extension.h>
#include <cstdint>
#include <optional>
#include <vector>

// sparse_linear.cpp: y = x W^T over one packed matrix, with the path choice (sparse / pair / tiled) by rows of x
at::Tensor sparse_linear(const at::Tensor& x, const std::optional<at::Tensor>& bias, const at::Tensor& masks,
                         const at::Tensor& values, const at::Tensor& row_offsets, int64_t out_f, int64_t in_f,
                         int64_t max_batch, int64_t max_batch_bf16, int64_t max_batch_fp32, int64_t pairs_min_batch,
                         int64_t tile_bytes);

// tensors: 3 per matrix (masks, values, row_offsets), the E gate/up matrices then the E down ones; shapes: out, in
// per matrix in the same order (experts.py: PackedExperts.tensors / .shapes)
at::Tensor routed_experts(const at::Tensor& x, const at::Tensor& topk_weights, const at::Tensor& topk_ids,
                          at::TensorList tensors, at::IntArrayRef shapes, bool apply_weights, int64_t max_batch,
                          int64_t max_batch_bf16, int64_t max_batch_fp32, int64_t pairs_min_batch,
                          int64_t tile_bytes) {
  const int64_t experts = static_cast<int64_t>(shapes.size()) / 4;
  TORCH_CHECK_VALUE(experts > 0 && static_cast<int64_t>(tensors.size()) == 6 * experts &&
                        static_cast<int64_t>(shapes.size()) == 4 * experts,
                    "routed_experts: ", tensors.size(), " tensors and ", shapes.size(),
                    " sizes do not describe 2 x E packed matrices");
  TORCH_CHECK_VALUE(x.dim() == 2 && x.is_contiguous() && topk_ids.dim() == 2 &&
                        topk_ids.sizes() == topk_weights.sizes() && topk_ids.size(0) == x.size(0),
                    "routed_experts: x ", x.sizes(), " (contiguous), topk_ids ", topk_ids.sizes(), " and topk_weights ",
                    topk_weights.sizes(), " must be [tokens, H] and [tokens, k]");
  const int64_t tokens = x.size(0), k = topk_ids.size(1), hidden = shapes[2 * experts];
  const at::Tensor ids = topk_ids.to(at::kLong).contiguous();
  const int64_t* id = ids.data_ptr<int64_t>();

  // counting sort of the routed slots (token * k + j) by expert
  std::vector<int64_t> start(experts + 1, 0);
  for (int64_t s = 0; s < tokens * k; ++s) {
    TORCH_CHECK_VALUE(id[s] < experts, "expert id ", id[s], " out of range for ", experts, " experts");
    if (id[s] >= 0) ++start[id[s] + 1];
  }
  for (int64_t e = 0; e < experts; ++e) start[e + 1] += start[e];
  std::vector<int64_t> fill(start.begin(), start.end() - 1), slots(start[experts]);
  for (int64_t s = 0; s < tokens * k; ++s)
    if (id[s] >= 0) slots[fill[id[s]]++] = s;

  const at::Tensor weights = topk_weights.reshape({-1}).to(at::kFloat);
  const auto index_options = at::TensorOptions().dtype(at::kLong);
  at::Tensor out = at::zeros({tokens, hidden}, x.options().dtype(at::kFloat));
  // Experts run one after another, each product split across the threads. (Sharing out whole experts among the
  // threads instead, when each has at most 4 tokens, measured no better at 1 token and worse at 16: Qwen3-30B-A3B's
  // layer, 2 threads, AMD EPYC, 2026-12-08.)
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t count = start[e + 1] - start[e];
    if (!count) continue;
    const at::Tensor slot = at::from_blob(slots.data() + start[e], {count}, index_options);
    const at::Tensor token = at::floor_divide(slot, k);
    const int64_t g = 3 * e, d = 3 * (experts + e);  // first tensor of the gate/up and of the down matrix
    const int64_t inter = shapes[2 * e] / 2;
    const at::Tensor h = sparse_linear(x.index_select(0, token), std::nullopt, tensors[g], tensors[g + 1],
                                       tensors[g + 2], shapes[2 * e], shapes[2 * e + 1], max_batch, max_batch_bf16,
                                       max_batch_fp32, pairs_min_batch, tile_bytes);
    const at::Tensor act = (at::silu(h.narrow(1, 0, inter)) * h.narrow(1, inter, inter)).contiguous();
    at::Tensor y = sparse_linear(act, std::nullopt, tensors[d], tensors[d + 1], tensors[d + 2],
                                 shapes[2 * (experts + e)], shapes[2 * (experts + e) + 1], max_batch, max_batch_bf16,
                                 max_batch_fp32, pairs_min_batch, tile_bytes)
                       .to(at::kFloat);
    if (apply_weights) y.mul_(weights.index_select(0, slot).unsqueeze(1));
    out.index_add_(0, token, y);
  }
  return out.to(x.scalar_type());
}

TORCH_LIBRARY_FRAGMENT(owl_ext, m) {
  m.def("routed_experts(Tensor x, Tensor topk_weights, Tensor topk_ids, Tensor[] tensors, int[] shapes, "
        "bool apply_weights, int max_batch, int max_batch_bf16, int max_batch_fp32, int pairs_min_batch, "
        "int tile_bytes) -> Tensor");
}

TORCH_LIBRARY_IMPL(owl_ext, CPU, m) { m.impl("routed_experts", &routed_experts); }
