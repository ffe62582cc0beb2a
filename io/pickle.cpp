#include "io/pickle.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "io/read_budget.h"

namespace shardload {
namespace {

// Opcodes of pickle protocols 0-5 that this reader handles (names as in Python's pickletools).
enum Op : uint8_t {
  kMark = '(',
  kStop = '.',
  kPop = '0',
  kPopMark = '1',
  kDup = '2',
  kBinFloat = 'G',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kBinInt2 = 'M',
  kNone = 'N',
  kBinPersId = 'Q',
  kReduce = 'R',
  kShortBinString = 'U',
  kBinString = 'T',
  kBinUnicode = 'X',
  kBinBytes = 'B',
  kShortBinBytes = 'C',
  kAppend = 'a',
  kBuild = 'b',
  kGlobal = 'c',
  kAppends = 'e',
  kBinGet = 'h',
  kLongBinGet = 'j',
  kEmptyList = ']',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTuple = 't',
  kSetItems = 'u',
  kEmptyDict = '}',
  kEmptyTuple = ')',
  kProto = 0x80,
  kNewObj = 0x81,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8a,
  kLong4 = 0x8b,
  kShortBinUnicode = 0x8c,
  kBinUnicode8 = 0x8d,
  kBinBytes8 = 0x8e,
  kMemoize = 0x94,
  kStackGlobal = 0x93,
  kFrame = 0x95,
};

std::string hex_byte(uint8_t b) {
  constexpr char kDigits[] = "0123456789abcdef";
  return std::string("0x") + kDigits[b >> 4] + kDigits[b & 15];
}

class Unpickler {
 public:
  Unpickler(std::string_view data, const PickleHooks& hooks, const PickleLimits& limits)
      : data_(data),
        hooks_(hooks),
        limits_(limits),
        state_(limits.max_state_bytes ? limits.max_state_bytes : parse_budget(data.size()),
               "pickle of " + std::to_string(data.size()) + " bytes: parsed state") {
    static_assert(sizeof(PickleValue) + 32 <= kPickleValueBytes);
  }

  PickleValuePtr run() {
    while (true) {
      op_pos_ = pos_;
      const uint8_t code = read_u8();
      switch (code) {
        case kProto: {
          const uint8_t protocol = read_u8();
          if (protocol > 5) fail("unsupported pickle protocol " + std::to_string(protocol));
          break;
        }
        case kFrame:
          read_uint(8);  // frames only group opcodes; the data is read as one piece anyway
          break;
        case kStop:
          if (stack_.size() != 1 || !marks_.empty()) fail("unbalanced stack at STOP");
          return stack_.back();
        case kMark:
          charge(kPickleSlotBytes, "a MARK");
          marks_.push_back(stack_.size());
          break;
        case kPop:
          pop();
          break;
        case kPopMark:
          pop_mark();
          break;
        case kDup:
          push(top());
          break;
        case kNone:
          push(make_value(PickleValue::Kind::kNone));
          break;
        case kNewTrue:
        case kNewFalse: {
          auto v = make_value(PickleValue::Kind::kBool);
          v->boolean = code == kNewTrue;
          push(v);
          break;
        }
        case kBinInt:
          push_int(static_cast<int32_t>(read_uint(4)));
          break;
        case kBinInt1:
          push_int(read_uint(1));
          break;
        case kBinInt2:
          push_int(read_uint(2));
          break;
        case kLong1:
          push_int(read_long(read_uint(1)));
          break;
        case kLong4:
          push_int(read_long(read_uint(4)));
          break;
        case kBinFloat: {
          // Big-endian IEEE double.
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | read_u8();
          auto v = make_value(PickleValue::Kind::kFloat);
          std::memcpy(&v->floating, &bits, sizeof bits);
          push(v);
          break;
        }
        case kShortBinUnicode:
        case kShortBinString:
          push_text(PickleValue::Kind::kString, read_uint(1));
          break;
        case kBinUnicode:
        case kBinString:
          push_text(PickleValue::Kind::kString, read_uint(4));
          break;
        case kBinUnicode8:
          push_text(PickleValue::Kind::kString, read_uint(8));
          break;
        case kShortBinBytes:
          push_text(PickleValue::Kind::kBytes, read_uint(1));
          break;
        case kBinBytes:
          push_text(PickleValue::Kind::kBytes, read_uint(4));
          break;
        case kBinBytes8:
          push_text(PickleValue::Kind::kBytes, read_uint(8));
          break;
        case kEmptyTuple:
          push(make_value(PickleValue::Kind::kTuple));
          break;
        case kEmptyList:
          push(make_value(PickleValue::Kind::kList));
          break;
        case kEmptyDict:
          push(make_value(PickleValue::Kind::kDict));
          break;
        case kTuple:
          push_tuple(pop_mark());
          break;
        case kTuple1:
        case kTuple2:
        case kTuple3: {
          const size_t n = code - kTuple1 + 1;
          if (stack_.size() < n + stack_floor()) fail("stack underflow");
          std::vector<PickleValuePtr> items(stack_.end() - n, stack_.end());
          stack_.resize(stack_.size() - n);
          push_tuple(std::move(items));
          break;
        }
        case kAppend: {
          auto value = pop();
          append(top(), {value});
          break;
        }
        case kAppends: {
          auto values = pop_mark();
          append(top(), values);
          break;
        }
        case kSetItem: {
          auto value = pop();
          auto key = pop();
          set_items(top(), {key, value});
          break;
        }
        case kSetItems: {
          auto items = pop_mark();
          set_items(top(), items);
          break;
        }
        case kGlobal: {
          std::string module = read_line();
          std::string name = read_line();
          push_global(module, name);
          break;
        }
        case kStackGlobal: {
          auto name = pop();
          auto module = pop();
          if (module->kind != PickleValue::Kind::kString ||
              name->kind != PickleValue::Kind::kString) {
            fail("STACK_GLOBAL needs two strings");
          }
          push_global(module->text, name->text);
          break;
        }
        case kBinPut:
          memo_put(read_uint(1));
          break;
        case kLongBinPut:
          memo_put(read_uint(4));
          break;
        case kMemoize:
          memo_put(memo_.size());
          break;
        case kBinGet:
          memo_get(read_uint(1));
          break;
        case kLongBinGet:
          memo_get(read_uint(4));
          break;
        case kBinPersId: {
          auto pid = pop();
          if (!hooks_.persistent_load) fail("unexpected persistent id");
          push(adopt(guarded([&] { return hooks_.persistent_load(pid); })));
          break;
        }
        case kReduce:
        case kNewObj: {
          auto args = pop();
          auto callable = pop();
          if (callable->kind != PickleValue::Kind::kGlobal) {
            fail("cannot call a " + callable->describe());
          }
          if (args->kind != PickleValue::Kind::kTuple) {
            fail("arguments of " + callable->text + " are a " + args->describe() + ", not a tuple");
          }
          if (!hooks_.call) fail("unexpected call of " + callable->text);
          push(adopt(guarded([&] { return hooks_.call(*callable, args->items); })));
          break;
        }
        case kBuild: {
          auto state = pop();
          auto object = top();
          if (!hooks_.build) fail("unexpected BUILD of a " + object->describe());
          check_mutable(*object);
          const size_t items = object->items.size();
          const size_t entries = object->entries.size();
          guarded([&] {
            hooks_.build(*object, state);
            return 0;
          });
          adopt(object, items, entries);
          break;
        }
        default:
          fail("unsupported opcode " + hex_byte(code));
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError("pickle: " + what + " (at byte " + std::to_string(op_pos_) + ")");
  }

  // Runs a hook; its FormatError gets the pickle prefix and the byte offset.
  template <typename F>
  auto guarded(F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const FormatError& e) {
      fail(e.what());
    }
  }

  // Everything the reader builds is charged against one budget of bytes before it is made.
  void charge(uint64_t bytes, const char* what) {
    try {
      state_.charge(bytes, what);
    } catch (const FormatError& e) {
      fail(e.what());
    }
  }

  PickleValuePtr make_value(PickleValue::Kind kind) {
    charge(kPickleValueBytes, "a value");
    return make_pickle_value(kind);
  }

  // A container inside another is frozen: changing it would make the recorded depths stale,
  // and is the only way a pickle can build a cycle.
  void check_mutable(const PickleValue& v) const {
    if (v.nested) fail("a " + v.describe() + " is changed after it was put into another value");
  }

  // Makes `child` an item of `parent` (a container being built or filled).
  void attach(PickleValue& parent, PickleValue& child) {
    if (&parent == &child) fail("a " + parent.describe() + " contains itself");
    const uint32_t depth = child.depth + 1;
    if (depth > limits_.max_depth) {
      fail("values nested deeper than " + std::to_string(limits_.max_depth) + " levels");
    }
    parent.depth = std::max(parent.depth, depth);
    child.nested = true;
  }

  // Checks and charges `more` items for container `v`.
  void check_items(const PickleValue& v, size_t more) {
    const size_t n = v.items.size() + v.entries.size() + more;
    if (n > limits_.max_items) {
      fail("a " + v.describe() + " of more than " + std::to_string(limits_.max_items) + " items");
    }
    charge(uint64_t{more} * kPickleSlotBytes, "container items");
  }

  // Values a hook made or changed (from item `items` and entry `entries` on): their items and
  // text count against the limits (a hook may copy a memoized list or string many times), their
  // depth is computed from their items.
  PickleValuePtr adopt(PickleValuePtr v, size_t items = 0, size_t entries = 0) {
    if (!v) fail("internal: a hook returned no value");
    const size_t fresh = v->items.size() - std::min(items, v->items.size()) +
                         2 * (v->entries.size() - std::min(entries, v->entries.size()));
    if (v->items.size() + v->entries.size() > limits_.max_items) {
      fail("a " + v->describe() + " of more than " + std::to_string(limits_.max_items) + " items");
    }
    // What the hook made: the value itself (a new one, or an object of its own), its items.
    charge(kPickleValueBytes + (v->kind == PickleValue::Kind::kObject ? kPickleObjectBytes : 0),
           "a value made by a hook");
    charge(uint64_t{fresh} * kPickleSlotBytes, "container items");
    for (size_t i = items; i < v->items.size(); ++i) attach(*v, *v->items[i]);
    for (size_t i = entries; i < v->entries.size(); ++i) {
      attach(*v, *v->entries[i].first);
      attach(*v, *v->entries[i].second);
    }
    count_text(v->text.size());
    return v;
  }

  // Every byte of text made counts against the budget: from the input at most once, from hooks
  // (which may copy one memoized string many times) each time.
  void count_text(size_t n) { charge(n, "strings"); }

  uint8_t read_u8() {
    if (pos_ >= data_.size()) fail("truncated data");
    return static_cast<uint8_t>(data_[pos_++]);
  }

  // Little-endian unsigned integer of `n` bytes.
  uint64_t read_uint(int n) {
    if (data_.size() - pos_ < static_cast<size_t>(n)) fail("truncated data");
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t{static_cast<uint8_t>(data_[pos_ + i])} << (8 * i);
    pos_ += n;
    return v;
  }

  // Two's complement little-endian integer of `n` bytes (LONG1, LONG4).
  int64_t read_long(uint64_t n) {
    if (n == 0) return 0;
    if (n > 8) fail("integer of " + std::to_string(n) + " bytes does not fit 64 bits");
    uint64_t v = read_uint(static_cast<int>(n));
    if (n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);
    return static_cast<int64_t>(v);
  }

  std::string read_line() {
    const size_t end = data_.find('\n', pos_);
    if (end == std::string_view::npos) fail("truncated data");
    std::string line(data_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return line;
  }

  size_t stack_floor() const { return marks_.empty() ? 0 : marks_.back(); }

  void push(PickleValuePtr v) {
    if (!v) fail("internal: null value");
    charge(kPickleSlotBytes, "a stack slot");
    stack_.push_back(std::move(v));
  }

  PickleValuePtr pop() {
    if (stack_.size() <= stack_floor()) fail("stack underflow");
    auto v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }

  const PickleValuePtr& top() {
    if (stack_.size() <= stack_floor()) fail("stack underflow");
    return stack_.back();
  }

  std::vector<PickleValuePtr> pop_mark() {
    if (marks_.empty()) fail("no MARK on the stack");
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<PickleValuePtr> items(std::make_move_iterator(stack_.begin() + mark),
                                      std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return items;
  }

  void push_int(int64_t value) {
    auto v = make_value(PickleValue::Kind::kInt);
    v->integer = value;
    push(v);
  }

  void push_text(PickleValue::Kind kind, uint64_t n) {
    // Checked against the input before anything is allocated.
    if (data_.size() - pos_ < n) {
      fail("a string of " + std::to_string(n) + " bytes, but only " +
           std::to_string(data_.size() - pos_) + " remain");
    }
    count_text(n);
    auto v = make_value(kind);
    v->text.assign(data_.substr(pos_, n));
    pos_ += n;
    push(v);
  }

  void push_tuple(std::vector<PickleValuePtr> items) {
    auto v = make_value(PickleValue::Kind::kTuple);
    check_items(*v, items.size());
    for (const auto& item : items) attach(*v, *item);
    v->items = std::move(items);
    push(v);
  }

  void push_global(const std::string& module, const std::string& name) {
    if (!hooks_.allow_global || !hooks_.allow_global(module, name)) {
      fail("global '" + module + "." + name + "' is not allowed");
    }
    count_text(module.size() + name.size() + 1);
    auto v = make_value(PickleValue::Kind::kGlobal);
    v->text = module + "." + name;
    push(v);
  }

  void append(const PickleValuePtr& list, const std::vector<PickleValuePtr>& values) {
    if (list->kind != PickleValue::Kind::kList) fail("cannot append to a " + list->describe());
    check_mutable(*list);
    check_items(*list, values.size());
    for (const auto& v : values) attach(*list, *v);
    list->items.insert(list->items.end(), values.begin(), values.end());
  }

  void set_items(const PickleValuePtr& dict, const std::vector<PickleValuePtr>& items) {
    if (dict->kind != PickleValue::Kind::kDict) fail("cannot set items of a " + dict->describe());
    if (items.size() % 2 != 0) fail("odd number of items for SETITEMS");
    check_mutable(*dict);
    check_items(*dict, items.size() / 2);
    for (const auto& v : items) attach(*dict, *v);
    for (size_t i = 0; i < items.size(); i += 2) dict->entries.emplace_back(items[i], items[i + 1]);
  }

  void memo_put(uint64_t index) {
    if (index > std::numeric_limits<uint32_t>::max()) fail("memo index out of range");
    const auto& value = top();
    auto it = memo_.find(static_cast<uint32_t>(index));
    if (it != memo_.end()) {
      it->second = value;
      return;
    }
    charge(kPickleMemoBytes, "a memo entry");
    memo_.emplace(static_cast<uint32_t>(index), value);
  }

  void memo_get(uint64_t index) {
    auto it = memo_.find(static_cast<uint32_t>(index));
    if (it == memo_.end()) fail("memo key " + std::to_string(index) + " is not set");
    push(it->second);
  }

  std::string_view data_;
  const PickleHooks& hooks_;
  const PickleLimits& limits_;
  ReadBudget state_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  std::vector<PickleValuePtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, PickleValuePtr> memo_;
};

}  // namespace

std::string PickleValue::describe() const {
  switch (kind) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kBytes:
      return "bytes";
    case Kind::kTuple:
      return "tuple";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kGlobal:
      return text;
    case Kind::kObject:
      return type_name;
  }
  return "value";
}

PickleValuePtr make_pickle_value(PickleValue::Kind kind) {
  auto v = std::make_shared<PickleValue>();
  v->kind = kind;
  return v;
}

PickleValuePtr unpickle(std::string_view data, const PickleHooks& hooks,
                        const PickleLimits& limits) {
  return Unpickler(data, hooks, limits).run();
}

PickleWriter::PickleWriter() {
  op(kProto);
  out_.push_back(2);
}

void PickleWriter::op(uint8_t code) { out_.push_back(static_cast<char>(code)); }

void PickleWriter::put_memo() {
  const uint32_t index = next_memo_++;
  if (index < 256) {
    op(kBinPut);
    out_.push_back(static_cast<char>(index));
  } else {
    op(kLongBinPut);
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>(index >> (8 * i)));
  }
}

void PickleWriter::global(std::string_view module, std::string_view name) {
  std::string full = std::string(module) + "\n" + std::string(name) + "\n";
  auto it = global_memo_.find(full);
  if (it != global_memo_.end()) {
    const uint32_t index = it->second;
    if (index < 256) {
      op(kBinGet);
      out_.push_back(static_cast<char>(index));
    } else {
      op(kLongBinGet);
      for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>(index >> (8 * i)));
    }
    return;
  }
  op(kGlobal);
  out_ += full;
  global_memo_.emplace(std::move(full), next_memo_);
  put_memo();
}

void PickleWriter::integer(int64_t value) {
  if (value >= 0 && value < 256) {
    op(kBinInt1);
    out_.push_back(static_cast<char>(value));
  } else if (value >= 0 && value < 65536) {
    op(kBinInt2);
    for (int i = 0; i < 2; ++i) out_.push_back(static_cast<char>(value >> (8 * i)));
  } else if (value >= std::numeric_limits<int32_t>::min() &&
             value <= std::numeric_limits<int32_t>::max()) {
    op(kBinInt);
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>(value >> (8 * i)));
  } else {
    op(kLong1);
    out_.push_back(8);
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<char>(value >> (8 * i)));
  }
}

void PickleWriter::string(std::string_view utf8) {
  if (utf8.size() > std::numeric_limits<uint32_t>::max()) {
    throw UsageError("pickle: string of " + std::to_string(utf8.size()) + " bytes is too long");
  }
  op(kBinUnicode);
  const auto n = static_cast<uint32_t>(utf8.size());
  for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>(n >> (8 * i)));
  out_ += utf8;
}

void PickleWriter::boolean(bool value) { op(value ? kNewTrue : kNewFalse); }

void PickleWriter::int_tuple(const std::vector<int64_t>& values) {
  if (values.empty()) {
    op(kEmptyTuple);
    return;
  }
  if (values.size() > 3) mark();
  for (int64_t v : values) integer(v);
  if (values.size() > 3) {
    op(kTuple);
  } else {
    op(static_cast<uint8_t>(kTuple1 + values.size() - 1));
  }
}

void PickleWriter::mark() { op(kMark); }
void PickleWriter::tuple_from_mark() { op(kTuple); }
void PickleWriter::empty_tuple() { op(kEmptyTuple); }
void PickleWriter::reduce() { op(kReduce); }
void PickleWriter::persistent_id() { op(kBinPersId); }
void PickleWriter::set_items() { op(kSetItems); }
void PickleWriter::none() { op(kNone); }

void PickleWriter::floating(double value) {
  // BINFLOAT is big-endian.
  const auto bits = std::bit_cast<uint64_t>(value);
  op(kBinFloat);
  for (int i = 7; i >= 0; --i) out_.push_back(static_cast<char>(bits >> (8 * i)));
}

void PickleWriter::bytes(std::string_view data) {
  if (data.size() > std::numeric_limits<uint32_t>::max()) {
    throw UsageError("pickle: bytes of " + std::to_string(data.size()) + " bytes are too long");
  }
  if (data.size() < 256) {
    op(kShortBinBytes);
    out_.push_back(static_cast<char>(data.size()));
  } else {
    op(kBinBytes);
    const auto n = static_cast<uint32_t>(data.size());
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>(n >> (8 * i)));
  }
  out_ += data;
}

void PickleWriter::empty_list() { op(kEmptyList); }
void PickleWriter::append() { op(kAppend); }
void PickleWriter::appends() { op(kAppends); }
void PickleWriter::empty_dict() { op(kEmptyDict); }
void PickleWriter::set_item() { op(kSetItem); }
void PickleWriter::newobj() { op(kNewObj); }
void PickleWriter::build() { op(kBuild); }

std::string PickleWriter::finish() {
  op(kStop);
  std::string result = std::move(out_);
  out_.clear();
  global_memo_.clear();
  next_memo_ = 0;
  return result;
}

}  // namespace shardload
