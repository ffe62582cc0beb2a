#include "core/crash_point.h"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace shardload {
namespace {

struct CrashSpec {
  bool armed = false;
  std::string point;
  int rank = -1;  // -1: any rank
};

CrashSpec parse_spec(const char* variable) {
  CrashSpec spec;
  const char* text = std::getenv(variable);
  if (text == nullptr || *text == '\0') return spec;
  std::string s(text);
  spec.armed = true;
  auto colon = s.rfind(':');
  spec.point = s.substr(0, colon);
  if (colon != std::string::npos) spec.rank = std::atoi(s.c_str() + colon + 1);
  return spec;
}

int launcher_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"}) {
    if (const char* v = std::getenv(name)) return std::atoi(v);
  }
  return 0;
}

bool matches(const CrashSpec& spec, const char* point, int rank) {
  if (!spec.armed || spec.point != point) return false;
  return spec.rank < 0 || spec.rank == (rank < 0 ? launcher_rank() : rank);
}

}  // namespace

void crash_point(const char* point, int rank) {
  static const CrashSpec crash = parse_spec("SHARDLOAD_CRASH_AT");
  static const CrashSpec stop = parse_spec("SHARDLOAD_STOP_AT");
  if (matches(stop, point, rank)) ::kill(::getpid(), SIGSTOP);
  if (matches(crash, point, rank)) ::kill(::getpid(), SIGKILL);
}

}  // namespace shardload
