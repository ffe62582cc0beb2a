#include "loader/verdict.h"

#include <map>
#include <set>

#include "sharding/box.h"
#include "sharding/rank_groups.h"

namespace shardload {
namespace {

std::string quoted_list(const std::vector<std::string>& keys) {
  std::string s;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i) s += ", ";
    s += "\"" + keys[i] + "\"";
  }
  return s;
}

/// The part of `key` up to and including its first '.', or "" when it has none.
std::string first_segment(const std::string& key) {
  auto dot = key.find('.');
  return dot == std::string::npos ? "" : key.substr(0, dot + 1);
}

/// A prefix p such that most keys of `with` are p + a key of `without`.
std::string common_extra_prefix(const std::vector<std::string>& with,
                                const std::vector<std::string>& without) {
  if (with.empty() || without.empty()) return "";
  std::set<std::string> plain(without.begin(), without.end());
  std::map<std::string, size_t> votes;
  for (const auto& k : with) {
    std::string p = first_segment(k);
    if (!p.empty() && plain.count(k.substr(p.size()))) ++votes[p];
  }
  for (const auto& [p, n] : votes) {
    if (2 * n >= std::min(with.size(), without.size())) return p;
  }
  return "";
}

}  // namespace

std::vector<std::string> prefix_hints(const std::vector<std::string>& missing,
                                      const std::vector<std::string>& unexpected) {
  std::vector<std::string> hints;
  if (std::string p = common_extra_prefix(unexpected, missing); !p.empty()) {
    hints.push_back("the checkpoint's keys start with \"" + p +
                    "\" where the model's do not (saved from a DistributedDataParallel or other "
                    "wrapper?): strip it with LoadOptions{.checkpoint_prefix = \"" +
                    p + "\"} or `shardload load --strip-prefix " + p + "`");
  }
  if (std::string p = common_extra_prefix(missing, unexpected); !p.empty()) {
    hints.push_back("the model's keys start with \"" + p +
                    "\" where the checkpoint's do not: add it with LoadOptions{.model_prefix = \"" +
                    p + "\"} or `shardload load --add-prefix " + p + "`");
  }
  return hints;
}

void decide_verdict(const LoadPlan& plan, const LoadOptions& options, LoadResult& result) {
  result.missing_keys = plan.missing_keys;
  // A key whose regions the chunks do not cover is missing too (never silently zero).
  for (const auto& u : plan.uncovered) {
    if (std::find(result.missing_keys.begin(), result.missing_keys.end(), u.key) ==
        result.missing_keys.end()) {
      result.missing_keys.push_back(u.key);
    }
  }
  result.unexpected_keys = plan.unexpected_keys;
  result.size_mismatches = plan.size_mismatches;
  result.dtype_conversions = plan.conversions;
  result.uncovered = plan.uncovered;
  result.hints = prefix_hints(plan.missing_keys, plan.unexpected_keys);

  // PyTorch's order: size mismatches are collected first, then missing and unexpected keys are
  // put in front of them.
  std::vector<std::string> messages;
  if (options.strict && !result.missing_keys.empty()) {
    messages.push_back("Missing key(s) in state_dict: " + quoted_list(result.missing_keys) + ". ");
  }
  if (options.strict && !result.unexpected_keys.empty()) {
    messages.push_back("Unexpected key(s) in state_dict: " + quoted_list(result.unexpected_keys) +
                       ". ");
  }
  if (!options.skip_size_mismatch) {
    for (const auto& m : result.size_mismatches) {
      messages.push_back("size mismatch for " + m.key + ": copying a param with shape " +
                         torch_size_str(m.checkpoint_shape) +
                         " from checkpoint, the shape in current model is " +
                         torch_size_str(m.model_shape) + ".");
    }
  }
  if (messages.empty()) {
    result.ok = true;
    result.error.clear();
    return;
  }
  if (options.strict && !result.uncovered.empty()) {
    std::string s = "Region(s) of the model not covered by the checkpoint's chunks: ";
    for (size_t i = 0; i < result.uncovered.size(); ++i) {
      const auto& u = result.uncovered[i];
      s += (i ? ", \"" : "\"") + u.key + "\"" + box_str(u.region) +
           (u.ranks.size() == 1 ? " on rank " + std::to_string(u.ranks[0])
                                : " on ranks " + ranks_str(u.ranks));
    }
    messages.push_back(s + ". ");
  }
  for (const auto& h : result.hints) messages.push_back("Hint: " + h + ".");
  result.ok = false;
  result.error = "Error(s) in loading state_dict for " + options.name + ":";
  for (const auto& m : messages) result.error += "\n\t" + m;
}

}  // namespace shardload
