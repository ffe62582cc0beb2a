// PyTorch's torch.save files (the zip format, default since torch 1.6): state dicts and nested
// training checkpoints.
#pragma once

#include <string>

#include "io/tensor_file.h"

namespace shardload {

/// Reads a torch.save zip file: read_pt_tensors (foreign_tensors.h) on the file opened without
/// blocking (a FIFO, a socket or a device is refused at once): the zip directory checked,
/// compressed records refused, data.pkl by the bounded, restricted unpickler that loads only
/// tensor rebuilders, typed storages and plain data constructors (pickle_data.h) and never runs
/// code from the file, every view checked against its storage, bool bytes checked where a view
/// covers them, views copied contiguous within the file's budget (io/read_budget.h). Tensors
/// come back contiguous, on the CPU; those of one storage may share its memory.
/// With `select` empty the file must be a flat state dict (dict or OrderedDict of str -> tensor
/// or nn.Parameter); otherwise `select` picks a sub-dictionary (TensorFileOptions::select,
/// pickle_select.h). Throws FormatError "In <path>: ..." (with the key where one is involved),
/// UsageError when `select` names nothing in the file.
TensorFileContents read_torch_contents(const std::string& path, const std::string& select);

/// The tensors of a flat state dict: read_torch_contents(path, "").tensors.
TensorList read_torch_file(const std::string& path);

/// Writes `tensors` as a torch.save zip file (pickle protocol 2, one storage per tensor) that
/// Python's torch.load reads, with weights_only=True or False, as an OrderedDict with the same
/// keys, dtypes, shapes and values. The file appears complete or not at all (AtomicFile: unique
/// temporary, fsync, rename, directory fsync). Throws UsageError for duplicate keys, keys that
/// are not UTF-8 or hold NUL and unsupported dtypes, FormatError when the file cannot be written.
void write_torch_file(const std::string& path, const TensorList& tensors);

}  // namespace shardload
