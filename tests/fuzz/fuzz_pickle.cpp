// libFuzzer target: the bounded unpickler, the data constructors and nested-checkpoint
// selection, with torch.save's globals answered by stand-ins (no LibTorch): a storage is an
// object of type "storage", _rebuild_tensor_v2 checks its arguments as torch_file.cpp does and
// makes an object of type "tensor". Any exception other than shardload::Error, any sanitizer
// report, timeout or allocation beyond libFuzzer's limit is a finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "io/pickle.h"
#include "io/pickle_data.h"
#include "io/pickle_select.h"

namespace {

using shardload::FormatError;
using shardload::PickleValue;
using shardload::PickleValuePtr;
using Kind = PickleValue::Kind;

PickleValuePtr object(std::string_view type) {
  auto v = shardload::make_pickle_value(Kind::kObject);
  v->type_name = std::string(type);
  return v;
}

void expect_ints(const PickleValuePtr& v) {
  if (v->kind != Kind::kTuple && v->kind != Kind::kList) throw FormatError("not a tuple");
  for (const auto& item : v->items) {
    if (item->kind != Kind::kInt || item->integer < 0) throw FormatError("not an int");
  }
}

shardload::PickleHooks hooks() {
  shardload::PickleHooks h;
  h.allow_global = [](const std::string& module, const std::string& name) {
    if (module == "torch._utils") {
      return name == "_rebuild_tensor_v2" || name == "_rebuild_parameter" ||
             name == "_rebuild_parameter_with_state";
    }
    if (module == "torch" && name.ends_with("Storage")) return true;
    return shardload::is_data_global(module, name);
  };
  h.persistent_load = [](const PickleValuePtr& pid) {
    if (pid->kind != Kind::kTuple || pid->items.size() < 5 ||
        pid->items[0]->kind != Kind::kString || pid->items[1]->kind != Kind::kGlobal ||
        pid->items[2]->kind != Kind::kString || pid->items[4]->kind != Kind::kInt) {
      throw FormatError("bad persistent id");
    }
    return object("storage");
  };
  h.call = [](const PickleValue& callable, const std::vector<PickleValuePtr>& args) {
    if (callable.text == "torch._utils._rebuild_tensor_v2") {
      if (args.size() < 6 || args.size() > 7 || args[0]->kind != Kind::kObject ||
          args[0]->type_name != "storage" || args[1]->kind != Kind::kInt) {
        throw FormatError("bad tensor");
      }
      expect_ints(args[2]);
      expect_ints(args[3]);
      return object(shardload::kPickleTensorType);
    }
    if (callable.text.starts_with("torch._utils._rebuild_parameter")) {
      if (args.size() < 3 || args[0]->kind != Kind::kObject ||
          args[0]->type_name != shardload::kPickleTensorType) {
        throw FormatError("bad parameter");
      }
      return args[0];
    }
    return shardload::call_data_global(callable, args);
  };
  h.build = [](PickleValue& object, const PickleValuePtr& state) {
    if (!shardload::build_data_value(object, state)) throw FormatError("cannot BUILD");
  };
  return h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const shardload::PickleHooks kHooks = hooks();
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  PickleValuePtr root;
  try {
    root = shardload::unpickle(input, kHooks);
  } catch (const shardload::Error&) {
    return 0;
  }
  if (root->depth > shardload::PickleLimits{}.max_depth) __builtin_trap();
  try {
    shardload::flat_state_dict(root);
  } catch (const shardload::Error&) {
  }
  for (const char* select : {".", "model", "state_dict", "optimizer.state", "0"}) {
    try {
      shardload::select_tensors(root, select);
    } catch (const shardload::Error&) {
    }
  }
  return 0;
}
