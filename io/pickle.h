// A restricted Python pickle reader and a small pickle writer, enough for torch.save state dicts.
//
// The reader never imports or calls anything by itself: every GLOBAL is checked against a
// caller-given allow list, and what a call (REDUCE, NEWOBJ), a persistent id or a BUILD means is
// decided by the caller's hooks. No LibTorch here; torch_file.cpp gives the torch meaning.
//
// The reader is bounded: it runs in one loop (no recursion), and the nesting depth of the values
// it builds, the bytes of all its state (values, stack, memo, strings: one budget) and every
// length are checked against PickleLimits and the remaining input before anything is allocated. The
// values form a DAG (a container cannot be changed once it is inside another, so no cycle can be
// built) whose depth is known.
#pragma once

#include <any>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace shardload {

struct PickleValue;
/// Pickle values are shared: the memo and the stack may hold the same (mutable) object.
using PickleValuePtr = std::shared_ptr<PickleValue>;

/// One value of the pickle object model that state dicts use.
struct PickleValue {
  enum class Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kBytes,
    kTuple,
    kList,
    kDict,
    kGlobal,
    kObject
  };

  Kind kind = Kind::kNone;
  bool boolean = false;
  int64_t integer = 0;
  double floating = 0.0;
  /// kString (UTF-8), kBytes; kGlobal: "module.name".
  std::string text;
  /// kTuple, kList.
  std::vector<PickleValuePtr> items;
  /// kDict, in insertion order (dicts and OrderedDicts alike).
  std::vector<std::pair<PickleValuePtr, PickleValuePtr>> entries;
  /// kObject: whatever a caller's hook produced (e.g. an at::Tensor).
  std::any object;
  /// kObject: a short description for error messages ("tensor", "storage").
  std::string type_name;
  /// Nesting depth: 0 for a value without children, 1 + the deepest child's for containers.
  uint32_t depth = 0;
  /// True once the value is an item of a tuple, list or dict; such a container is frozen.
  bool nested = false;

  /// "None", "int", "str", "dict", ..., the global's name, or the object's type_name.
  std::string describe() const;
};

/// Makes a value of a scalar kind.
PickleValuePtr make_pickle_value(PickleValue::Kind kind);

/// Bounds of one unpickling; exceeding any is a FormatError naming the byte offset.
struct PickleLimits {
  /// Deepest nesting of tuples, lists and dicts (a state dict needs 3, a training checkpoint
  /// about 6; Python's own recursion limit is 1000).
  uint32_t max_depth = 200;
  /// Items of one tuple, list or dict.
  size_t max_items = size_t{1} << 24;
  /// Bytes of parsed state, one budget for everything the reader builds: every value made
  /// (kPickleValueBytes each, objects from hooks kPickleObjectBytes more), every stack slot
  /// and container item (kPickleSlotBytes), every memo entry (kPickleMemoBytes), every byte
  /// of strings. 0: parse_budget(the pickle's size) (io/read_budget.h); a torch.save file's
  /// readers pass parse_budget(the file's size).
  uint64_t max_state_bytes = 0;
};

/// What the state budget counts, in bytes, for one value, one object a hook made (an
/// at::Tensor, a tensor's layout), one slot of the stack or of a container (with room for a
/// vector's growth) and one memo entry.
inline constexpr uint64_t kPickleValueBytes = 256;
inline constexpr uint64_t kPickleObjectBytes = 512;
inline constexpr uint64_t kPickleSlotBytes = 32;
inline constexpr uint64_t kPickleMemoBytes = 64;

/// What a restricted unpickling may do; every hook may throw FormatError to reject its input.
struct PickleHooks {
  /// True when the global `module.name` may be loaded. Anything else is rejected, unresolved.
  std::function<bool(const std::string& module, const std::string& name)> allow_global;
  /// Result of BINPERSID for the persistent id `pid`.
  std::function<PickleValuePtr(const PickleValuePtr& pid)> persistent_load;
  /// Result of calling the (allowed) global `callable` with `args` (REDUCE, NEWOBJ).
  std::function<PickleValuePtr(const PickleValue& callable,
                               const std::vector<PickleValuePtr>& args)>
      call;
  /// Applies BUILD's `state` to `object` (e.g. an OrderedDict's `_metadata`, ignored).
  std::function<void(PickleValue& object, const PickleValuePtr& state)> build;
};

/// Unpickles `data` (protocols 2 to 5, the opcodes torch.save state dicts use) and returns the
/// top-level object. Throws FormatError on unknown opcodes, disallowed globals, truncated or
/// malformed data, a container changed after it was nested (which is how cycles are built),
/// and anything beyond `limits`; messages start with "pickle: " and give the byte offset (hook
/// errors too). Values that hooks return are adopted: their depth is computed from their items.
PickleValuePtr unpickle(std::string_view data, const PickleHooks& hooks,
                        const PickleLimits& limits = {});

/// Writes a protocol 2 pickle opcode by opcode; the caller keeps the stack balanced.
class PickleWriter {
 public:
  /// Starts the pickle (PROTO 2).
  PickleWriter();

  /// GLOBAL module.name; memoized, so that a repeat costs a BINGET.
  void global(std::string_view module, std::string_view name);
  /// The smallest of BININT1, BININT2, BININT, LONG1 that holds `value`.
  void integer(int64_t value);
  /// BINUNICODE of a UTF-8 string.
  void string(std::string_view utf8);
  /// NEWTRUE / NEWFALSE.
  void boolean(bool value);
  /// A tuple of integers: EMPTY_TUPLE, TUPLE1-3, or MARK ... TUPLE.
  void int_tuple(const std::vector<int64_t>& values);
  /// MARK.
  void mark();
  /// TUPLE: the items since the last MARK.
  void tuple_from_mark();
  /// EMPTY_TUPLE.
  void empty_tuple();
  /// REDUCE: calls the callable below the argument tuple.
  void reduce();
  /// BINPERSID: the top of the stack is a persistent id.
  void persistent_id();
  /// SETITEMS: key/value pairs since the last MARK into the dict below the MARK.
  void set_items();
  /// NONE.
  void none();
  /// BINFLOAT: the double's 8 bytes as they are (NaN payloads and -0.0 kept).
  void floating(double value);
  /// SHORT_BINBYTES / BINBYTES (protocol 3 opcodes, which every Python 3 unpickler reads).
  void bytes(std::string_view data);
  /// EMPTY_LIST.
  void empty_list();
  /// APPEND: the top of the stack onto the list below it.
  void append();
  /// APPENDS: the items since the last MARK onto the list below the MARK.
  void appends();
  /// EMPTY_DICT.
  void empty_dict();
  /// SETITEM: the key and value on top of the stack into the dict below them.
  void set_item();
  /// NEWOBJ: `cls.__new__(cls, *args)` for the class below the argument tuple.
  void newobj();
  /// BUILD: the top of the stack is the state (`__setstate__` or `__dict__` update) of the
  /// object below it.
  void build();
  /// Ends the pickle (STOP) and returns its bytes; the writer is empty afterwards.
  std::string finish();

 private:
  void op(uint8_t code);
  void put_memo();

  std::string out_;
  std::unordered_map<std::string, uint32_t> global_memo_;
  uint32_t next_memo_ = 0;
};

}  // namespace shardload
