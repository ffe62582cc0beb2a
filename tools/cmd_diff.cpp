// shardload diff A B [--json] [--atol X] [--select KEY | --select-a KEY --select-b KEY]
#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "io/checkpoint_source.h"
#include "io/key_text.h"
#include "io/read_budget.h"
#include "io/torch_dtype.h"
#include "loader/checkpoint_info.h"
#include "loader/shard_files.h"
#include "sharding/box.h"
#include "tools/commands.h"

namespace shardload::tools {
namespace {

/// Elements compared at a time: each side's bytes and their float64 copies stay within a few
/// times this many elements, whatever the tensors' sizes.
constexpr int64_t kWindowElements = int64_t{1} << 20;

struct DiffArgs {
  std::string a, b;
  bool json = false;
  std::optional<double> atol;
  std::string select, select_a, select_b;
};

/// One side: its index by key and the readers of its files.
class Side {
 public:
  Side(const std::string& path, const std::string& select)
      : info_(read_checkpoint_info(path, select)), files_(info_.source) {
    std::map<std::string, int64_t> covered;
    for (size_t i = 0; i < info_.index.size(); ++i) {
      const ChunkRecord& row = info_.index[i];
      auto [it, fresh] = chunks_.try_emplace(row.key);
      if (fresh) order_.push_back(row.key);
      it->second.push_back(i);
      covered[row.key] += numel(row.shape);
    }
    // The chunks of a key do not overlap (validate_index): counting elements proves coverage.
    for (const auto& key : order_) {
      if (covered[key] != numel(first(key).global_shape)) {
        throw FormatError("In " + info_.dir + ": key '" + key +
                          "': the stored chunks do not cover the whole tensor");
      }
    }
  }
  const CheckpointInfo& info() const { return info_; }
  const std::vector<std::string>& keys() const { return order_; }
  bool has(const std::string& key) const { return chunks_.count(key) != 0; }
  /// The key's chunks (at least one).
  std::vector<const ChunkRecord*> chunks(const std::string& key) const {
    std::vector<const ChunkRecord*> out;
    for (size_t i : chunks_.at(key)) out.push_back(&info_.index[i]);
    return out;
  }
  const ChunkRecord& first(const std::string& key) const {
    return info_.index[chunks_.at(key).front()];
  }
  /// Refuses a chunk whose elements are absurd for the bytes its file holds for it (a .pt view
  /// expanded with stride 0 to 2^40 elements from 4 bytes): comparing it would run for hours.
  void check_stored(const ChunkRecord& row) {
    const ChunkReader& reader = files_.get(row.file);
    reader.prepare(row);
    const uint64_t stored = reader.stored_bytes(row);
    if (row.nbytes > stored && row.nbytes - stored > kViewFloorBytes) {
      throw FormatError("In " + reader.path() + ": key " + quote_text(row.key) + ": a view of " +
                        std::to_string(numel(row.shape)) + " elements (" +
                        std::to_string(row.nbytes) + " bytes) over " + std::to_string(stored) +
                        " stored bytes (a stride-0 expansion?): diff compares views of at most " +
                        std::to_string(kViewFloorBytes) + " bytes more than they store");
    }
  }
  /// Reads `box` (global coordinates, inside `row`'s chunk) into a fresh tensor, verified.
  at::Tensor read(const ChunkRecord& row, const Box& box) {
    Shape in_chunk(box.offset.size());
    for (size_t d = 0; d < in_chunk.size(); ++d) in_chunk[d] = box.offset[d] - row.offset[d];
    at::Tensor t = at::empty(box.shape, at::TensorOptions().dtype(scalar_type_of(row.dtype)));
    files_.get(row.file).read(row, in_chunk, box.shape, t.data_ptr(), /*verify=*/true);
    return t;
  }

 private:
  CheckpointInfo info_;
  ShardFiles files_;
  std::map<std::string, std::vector<size_t>> chunks_;
  std::vector<std::string> order_;
};

/// A common key with equal shapes, compared.
struct Compared {
  std::string key;
  DType dtype_a, dtype_b;
  Shape shape;
  bool identical = true;    ///< same dtype and the same bytes
  double max_abs_diff = 0;  ///< in float64; +inf where one side is NaN or the infinities differ
};

/// max |a - b| over two equally shaped tensors, in float64: NaN against NaN and equal
/// infinities count as 0, NaN against a number as +inf.
double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0) return 0;
  const at::Tensor x = a.to(at::kDouble), y = b.to(at::kDouble);
  at::Tensor d = (x - y).abs();
  const at::Tensor same = (x == y).logical_or(x.isnan().logical_and(y.isnan()));
  d = at::where(same, at::zeros_like(d), d);
  d = at::where(d.isnan(), at::full_like(d, std::numeric_limits<double>::infinity()), d);
  return d.max().item<double>();
}

Compared compare(const std::string& key, Side& a, Side& b) {
  const ChunkRecord& fa = a.first(key);
  const ChunkRecord& fb = b.first(key);
  Compared c{key, fa.dtype, fb.dtype, fa.global_shape};
  c.identical = fa.dtype == fb.dtype;
  for (const ChunkRecord* ca : a.chunks(key)) a.check_stored(*ca);
  for (const ChunkRecord* cb : b.chunks(key)) b.check_stored(*cb);
  for (const ChunkRecord* ca : a.chunks(key)) {
    for (const ChunkRecord* cb : b.chunks(key)) {
      auto common = intersect(Box{ca->offset, ca->shape}, Box{cb->offset, cb->shape});
      if (!common) continue;
      for_each_budget_piece(*common, 1, kWindowElements, [&](const Box& window) {
        const at::Tensor x = a.read(*ca, window);
        const at::Tensor y = b.read(*cb, window);
        if (c.identical && x.nbytes() > 0 &&
            std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) != 0) {
          c.identical = false;
        }
        c.max_abs_diff = std::max(c.max_abs_diff, max_abs_diff(x, y));
      });
    }
  }
  return c;
}

nlohmann::json number_or_null(double x) {
  return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr);
}

std::string number_text(double x) {
  if (std::isinf(x)) return "inf";
  std::ostringstream s;
  s << std::setprecision(6) << x;
  return s.str();
}

std::string joined(const std::vector<std::string>& keys, size_t shown = 10) {
  std::string out;
  for (size_t i = 0; i < keys.size() && i < shown; ++i) out += (i ? ", " : "") + keys[i];
  if (keys.size() > shown) out += ", ... and " + std::to_string(keys.size() - shown) + " more";
  return out;
}

}  // namespace

Runner add_diff(CLI::App& app) {
  auto args = std::make_shared<DiffArgs>();
  CLI::App* cmd = app.add_subcommand(
      "diff",
      "Compare two checkpoints of any kind: keys only in A or only in B, shape and dtype "
      "differences, and each common tensor's maximum absolute difference (float64, read "
      "chunk by chunk in bounded memory). Exit 0 when equal (bit for bit, or within --atol), "
      "1 when they differ. Not collective.");
  cmd->add_option("A", args->a,
                  "checkpoint directory, run directory (its latest), Hugging Face directory, "
                  ".safetensors or .pt file")
      ->required();
  cmd->add_option("B", args->b, "the same kinds as A")->required();
  cmd->add_flag("--json", args->json, "print one JSON object");
  cmd->add_option("--atol", args->atol,
                  "equal when every common tensor's maximum absolute difference is at most X "
                  "(dtype differences are then reported, not counted); without it, equal means "
                  "bit for bit")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--select", args->select,
                  "the sub-dictionary of a nested .pt checkpoint, for A and B where they are .pt "
                  "files (see convert --select)");
  cmd->add_option("--select-a", args->select_a, "--select for A alone");
  cmd->add_option("--select-b", args->select_b, "--select for B alone");
  return [args]() -> int {
    if (world_rank() != 0) return 0;
    auto select_for = [&](const std::string& path, const std::string& own) {
      return !own.empty() ? own : is_torch_save_path(path) ? args->select : std::string();
    };
    Side a(args->a, select_for(args->a, args->select_a));
    Side b(args->b, select_for(args->b, args->select_b));
    print_notes(a.info().notes);
    print_notes(b.info().notes);

    std::vector<std::string> only_a, only_b;
    std::vector<std::pair<std::string, std::pair<Shape, Shape>>> shapes;
    std::vector<Compared> compared;
    for (const auto& key : a.keys()) {
      if (!b.has(key)) {
        only_a.push_back(key);
        continue;
      }
      const Shape& sa = a.first(key).global_shape;
      const Shape& sb = b.first(key).global_shape;
      if (sa != sb) {
        shapes.push_back({key, {sa, sb}});
        continue;
      }
      compared.push_back(compare(key, a, b));
    }
    for (const auto& key : b.keys()) {
      if (!a.has(key)) only_b.push_back(key);
    }
    size_t dtypes = 0, differing = 0;
    for (const Compared& c : compared) {
      dtypes += c.dtype_a != c.dtype_b;
      const bool same = args->atol ? c.max_abs_diff <= *args->atol : c.identical;
      differing += !same;
    }
    const bool equal = only_a.empty() && only_b.empty() && shapes.empty() && differing == 0;

    if (args->json) {
      nlohmann::json j;
      j["equal"] = equal;
      j["a"] = {{"path", args->a},
                {"format", std::string(source_format_name(a.info().source.format))},
                {"tensors", a.keys().size()}};
      j["b"] = {{"path", args->b},
                {"format", std::string(source_format_name(b.info().source.format))},
                {"tensors", b.keys().size()}};
      j["atol"] = args->atol ? nlohmann::json(*args->atol) : nlohmann::json(nullptr);
      j["only_in_a"] = only_a;
      j["only_in_b"] = only_b;
      j["shape_mismatches"] = nlohmann::json::array();
      for (const auto& [key, s] : shapes) {
        j["shape_mismatches"].push_back(
            {{"key", key}, {"a_shape", s.first}, {"b_shape", s.second}});
      }
      j["dtype_mismatches"] = nlohmann::json::array();
      j["tensors"] = nlohmann::json::array();
      for (const Compared& c : compared) {
        if (c.dtype_a != c.dtype_b) {
          j["dtype_mismatches"].push_back({{"key", c.key},
                                           {"a_dtype", std::string(dtype_name(c.dtype_a))},
                                           {"b_dtype", std::string(dtype_name(c.dtype_b))}});
        }
        j["tensors"].push_back({{"key", c.key},
                                {"a_dtype", std::string(dtype_name(c.dtype_a))},
                                {"b_dtype", std::string(dtype_name(c.dtype_b))},
                                {"shape", c.shape},
                                {"identical", c.identical},
                                {"max_abs_diff", number_or_null(c.max_abs_diff)}});
      }
      j["common"] = compared.size() + shapes.size();
      j["differing"] = differing;
      std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      return equal ? 0 : 1;
    }

    std::cout << "A: " << args->a << " (" << a.info().source.description << ", " << a.keys().size()
              << " tensors)\n"
              << "B: " << args->b << " (" << b.info().source.description << ", " << b.keys().size()
              << " tensors)\n";
    if (!only_a.empty())
      std::cout << "only in A (" << only_a.size() << "): " << joined(only_a) << "\n";
    if (!only_b.empty())
      std::cout << "only in B (" << only_b.size() << "): " << joined(only_b) << "\n";
    for (const auto& [key, s] : shapes) {
      std::cout << "shape differs: " << key << "  A " << shape_str(s.first) << "  B "
                << shape_str(s.second) << "\n";
    }
    // The table: common tensors that are not identical, largest difference first.
    std::vector<const Compared*> rows;
    for (const Compared& c : compared) {
      if (!c.identical) rows.push_back(&c);
    }
    std::stable_sort(rows.begin(), rows.end(), [](const Compared* x, const Compared* y) {
      return x->max_abs_diff > y->max_abs_diff;
    });
    constexpr size_t kRows = 20;
    if (!rows.empty()) {
      size_t width = 3;
      for (size_t i = 0; i < rows.size() && i < kRows; ++i)
        width = std::max(width, rows[i]->key.size());
      std::cout << std::left << std::setw(static_cast<int>(width)) << "key"
                << "  dtype A    dtype B    shape         max |A-B|\n";
      for (size_t i = 0; i < rows.size() && i < kRows; ++i) {
        const Compared& c = *rows[i];
        std::cout << std::left << std::setw(static_cast<int>(width)) << c.key << "  "
                  << std::setw(9) << dtype_name(c.dtype_a) << "  " << std::setw(9)
                  << dtype_name(c.dtype_b) << "  " << std::setw(12) << shape_str(c.shape) << "  "
                  << number_text(c.max_abs_diff) << "\n";
      }
      if (rows.size() > kRows) std::cout << "... and " << rows.size() - kRows << " more\n";
    }
    std::cout << compared.size() << " common tensor(s) compared: " << compared.size() - rows.size()
              << " identical, " << rows.size() << " not identical (" << dtypes
              << " of other dtype)";
    if (args->atol) std::cout << ", " << differing << " beyond --atol " << *args->atol;
    std::cout << "\n" << (equal ? "equal" : "differ") << "\n";
    return equal ? 0 : 1;
  };
}

}  // namespace shardload::tools
