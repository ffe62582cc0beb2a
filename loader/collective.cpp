#include "loader/collective.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"

namespace shardload {

void PhaseRunner::run(const std::string& phase, const std::function<void()>& body) {
  ErrorKind kind = ErrorKind::kNone;
  std::string message;
  try {
    maybe_inject_failure(phase, comm_.rank());
    body();
  } catch (const std::bad_alloc&) {
    kind = ErrorKind::kOther;
    message = "out of memory";
  } catch (const std::exception& e) {
    kind = current_error_kind();
    message = e.what();
  } catch (...) {
    kind = ErrorKind::kOther;
    message = "unknown error";
  }
  reduce(phase, kind, message);
}

void PhaseRunner::reduce(const std::string& phase, ErrorKind kind, const std::string& message) {
  // One cheap reduction when all went well; the messages travel only on failure.
  if (comm_.allreduce_max(static_cast<int64_t>(kind)) == 0) return;
  std::string mine;
  if (kind != ErrorKind::kNone) {
    mine.push_back(static_cast<char>(kind));
    mine += message;
  }
  auto all = comm_.allgather(mine);
  ErrorKind first = ErrorKind::kNone;
  std::string text = operation_ + " failed in phase '" + phase + "':";
  // Identical messages from several ranks are reported once, naming all of them.
  std::vector<std::pair<std::string, std::vector<int>>> grouped;
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].empty()) continue;
    if (first == ErrorKind::kNone) first = static_cast<ErrorKind>(all[r][0]);
    std::string msg = all[r].substr(1);
    auto it =
        std::find_if(grouped.begin(), grouped.end(), [&](const auto& g) { return g.first == msg; });
    if (it == grouped.end()) {
      grouped.push_back({msg, {static_cast<int>(r)}});
    } else {
      it->second.push_back(static_cast<int>(r));
    }
  }
  for (const auto& [msg, ranks] : grouped) {
    text += ranks.size() == 1 ? "\n  rank " : "\n  ranks ";
    for (size_t i = 0; i < ranks.size(); ++i) text += (i ? "," : "") + std::to_string(ranks[i]);
    text += ": " + msg;
  }
  throw_error(first, text);
}

namespace {

void put_u64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }
void put_str(std::string& out, const std::string& s) {
  put_u64(out, s.size());
  out += s;
}
void put_shape(std::string& out, const Shape& s) {
  put_u64(out, s.size());
  for (int64_t d : s) put_u64(out, static_cast<uint64_t>(d));
}

struct In {
  const std::string& s;
  size_t pos = 0;
  uint64_t u64() {
    if (pos + 8 > s.size()) throw CommError("malformed declaration exchange");
    uint64_t v;
    std::memcpy(&v, s.data() + pos, 8);
    pos += 8;
    return v;
  }
  std::string str() {
    uint64_t n = u64();
    if (n > s.size() - pos) throw CommError("malformed declaration exchange");
    std::string out = s.substr(pos, n);
    pos += n;
    return out;
  }
  Shape shape() {
    uint64_t n = u64();
    if (n > 64) throw CommError("malformed declaration exchange");
    Shape out(n);
    for (auto& d : out) d = static_cast<int64_t>(u64());
    return out;
  }
};

}  // namespace

std::vector<std::vector<Declaration>> exchange_declarations(const Communicator& comm,
                                                            const std::vector<Declaration>& mine) {
  std::string bytes;
  for (const auto& d : mine) {
    put_str(bytes, d.key);
    put_u64(bytes, static_cast<uint64_t>(d.dtype));
    put_shape(bytes, d.local_shape);
    put_u64(bytes, static_cast<uint64_t>(d.kind));
    put_shape(bytes, d.global_shape);
    put_shape(bytes, d.offset);
    put_u64(bytes, static_cast<uint64_t>(d.split_dim));
    put_u64(bytes, d.group.size());
    for (int g : d.group) put_u64(bytes, static_cast<uint64_t>(g));
  }
  auto all = comm.allgather(bytes);
  std::vector<std::vector<Declaration>> out(all.size());
  for (size_t r = 0; r < all.size(); ++r) {
    In in{all[r]};
    while (in.pos < all[r].size()) {
      Declaration d;
      d.key = in.str();
      d.dtype = static_cast<DType>(in.u64());
      d.local_shape = in.shape();
      d.kind = static_cast<Declaration::Kind>(in.u64());
      d.global_shape = in.shape();
      d.offset = in.shape();
      d.split_dim = static_cast<int64_t>(in.u64());
      uint64_t n = in.u64();
      for (uint64_t i = 0; i < n; ++i) d.group.push_back(static_cast<int>(in.u64()));
      out[r].push_back(std::move(d));
    }
  }
  return out;
}

void maybe_inject_failure(const std::string& phase, int rank) {
  const char* spec = std::getenv("SHARDLOAD_FAIL_AT");
  if (!spec) return;
  std::string s(spec);
  auto colon = s.rfind(':');
  if (colon == std::string::npos) return;
  if (s.substr(0, colon) == phase && s.substr(colon + 1) == std::to_string(rank)) {
    throw Error("injected failure (SHARDLOAD_FAIL_AT=" + s + ")");
  }
}

}  // namespace shardload
