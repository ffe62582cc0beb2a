// The globals of checkpoint pickles that only build plain data, interpreted here and never
// called: what nested training checkpoints (optimizer states, Lightning-style dicts) need
// besides tensors. No LibTorch; torch_file.cpp adds the tensor globals on top.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/pickle.h"

namespace shardload {

/// True for the data globals: `collections.OrderedDict`, `torch.Size` (a tuple of ints),
/// `_codecs.encode` (protocol 2's bytes: `_codecs.encode(str, 'latin1')`), numpy's scalars
/// (`numpy.core.multiarray.scalar` and numpy 2's `numpy._core.multiarray.scalar`, with
/// `numpy.dtype`). Nothing else: no global that can run code.
bool is_data_global(const std::string& module, const std::string& name);

/// The value that calling the data global `callable` (kGlobal, accepted by is_data_global) with
/// `args` produces: a dict, a tuple, bytes, a plain int/float/bool for a numpy scalar, or an
/// opaque "numpy.dtype" object. Throws FormatError for arguments the constructor does not take
/// (a numpy scalar of an unknown or big-endian dtype, bytes that are not Latin-1, ...).
PickleValuePtr call_data_global(const PickleValue& callable,
                                const std::vector<PickleValuePtr>& args);

/// BUILD of a data value: an OrderedDict's state (its `_metadata`, module versions that state
/// dicts do not need) is dropped; a numpy dtype's state tuple sets its byte order. Returns false
/// when `object` is not such a value; throws FormatError for a state it does not take.
bool build_data_value(PickleValue& object, const PickleValuePtr& state);

/// The globals a torch.save pickle may load, for both of its readers (io/pt/torch_file.cpp builds
/// tensors, io/pt_layout.cpp only describes them): the tensor rebuilders of torch._utils, the
/// typed storage classes (torch.FloatStorage, ...) and the data globals above. Nothing that can
/// run code.
bool is_checkpoint_global(const std::string& module, const std::string& name);

/// The unpickling hooks of a torch.save data.pkl: is_checkpoint_global, BUILD of data values
/// (build_data_value), and the reader's own persistent_load and call.
PickleHooks checkpoint_pickle_hooks(decltype(PickleHooks::persistent_load) persistent_load,
                                    decltype(PickleHooks::call) call);

/// The hooks of a pickle that may hold plain data only (is_data_global; no persistent ids):
/// a DCP bytes item, a torch.save of a step or a learning rate.
PickleHooks data_pickle_hooks();
/// The int `v`; FormatError naming `what` for anything else.
int64_t pickle_int(const PickleValuePtr& v, const char* what);
/// A tuple or list of at most kMaxDims non-negative ints (a size or a stride).
std::vector<int64_t> pickle_dims(const PickleValuePtr& v, const char* what);

/// A torch.save persistent id ('storage', <torch.XStorage>, '<key>', '<location>', numel),
/// checked: a typed storage class (numel in elements of its dtype) or
/// torch.storage.UntypedStorage (numel in bytes; the dtype comes with the tensor:
/// _rebuild_tensor_v3), a key of at most 256 bytes (torch.save writes "0", "1", ...).
struct StorageId {
  std::string key;
  std::optional<DType> dtype;  ///< nullopt: an UntypedStorage
  int64_t numel = 0;
};

/// The dtype a pickle names as a global `torch.<name>` (torch.float8_e4m3fn, ...); nullopt for
/// anything else.
std::optional<DType> dtype_of_global(const PickleValue& value);
StorageId parse_storage_id(const PickleValuePtr& pid);

}  // namespace shardload
