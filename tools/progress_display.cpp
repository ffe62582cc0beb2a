#include "tools/progress_display.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>

namespace shardload::tools {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::string fixed(double value, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
  return buf;
}

std::string rate_text(int64_t bytes, double seconds) {
  if (seconds <= 0) return "- GiB/s";
  return fixed(static_cast<double>(bytes) / kGiB / seconds, 2) + " GiB/s";
}

/// "42 s", "3m05s", "2h07m".
std::string duration_text(double seconds) {
  auto s = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  char buf[64];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%lld s", static_cast<long long>(s));
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60));
  }
  return buf;
}

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

ProgressDisplay::ProgressDisplay(std::ostream& out, Options options, Clock clock,
                                 std::string operation)
    : out_(out),
      options_(options),
      clock_(std::move(clock)),
      operation_(std::move(operation)),
      start_(clock_()) {}

ProgressDisplay ProgressDisplay::for_stderr(std::string operation) {
  Options options;
  options.live = ::isatty(STDERR_FILENO) == 1;
  if (const char* after = std::getenv("SHARDLOAD_PROGRESS_AFTER")) {
    char* end = nullptr;
    double v = std::strtod(after, &end);
    if (end != after && *end == '\0' && std::isfinite(v) && v >= 0) options.after_seconds = v;
  }
  return ProgressDisplay(std::cerr, options, steady_seconds, std::move(operation));
}

double ProgressDisplay::elapsed() const { return clock_() - start_; }

std::string ProgressDisplay::format_bytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (bytes < 1024) return std::to_string(bytes) + " B";
  if (b < 1024.0 * 1024) return fixed(b / 1024, 1) + " KiB";
  if (b < kGiB) return fixed(b / 1024 / 1024, 1) + " MiB";
  return fixed(b / kGiB, 2) + " GiB";
}

void ProgressDisplay::update(const Progress& p) {
  if (finished_) return;
  if (p.finished) {
    finish(p.bytes_done);
    return;
  }
  const double t = elapsed();
  if (t < options_.after_seconds) return;
  const double interval = options_.live ? options_.live_every_seconds : options_.every_seconds;
  if (last_line_ >= 0 && t - last_line_ < interval) return;
  last_line_ = t;

  std::string text = operation_;
  if (!p.phase.empty()) text += " (" + p.phase + ")";
  text += ": " + format_bytes(p.bytes_done);
  if (p.bytes_total > 0) {
    double fraction = std::min(1.0, static_cast<double>(p.bytes_done) / p.bytes_total);
    text += " of " + format_bytes(p.bytes_total) + " (" +
            std::to_string(static_cast<int>(fraction * 100)) + "%)";
  }
  text += ", " + rate_text(p.bytes_done, t);
  if (p.bytes_total > 0 && p.bytes_done > 0 && t > 0) {
    double eta = static_cast<double>(p.bytes_total - p.bytes_done) * t / p.bytes_done;
    text += ", ETA " + duration_text(eta);
  }
  write_line(text, false);
}

ProgressCallback ProgressDisplay::callback() {
  return [this](const Progress& p) { update(p); };
}

void ProgressDisplay::finish(int64_t bytes) {
  if (finished_) return;
  finished_ = true;
  const double t = elapsed();
  if (!shown_ && t < options_.after_seconds) return;
  write_line(operation_ + ": " + format_bytes(bytes) + " in " + fixed(t, 1) + " s (" +
                 rate_text(bytes, t) + ")",
             true);
}

void ProgressDisplay::write_line(const std::string& text, bool final) {
  if (options_.live) {
    out_ << '\r' << text;
    // Blank what is left of a longer previous line.
    if (text.size() < live_width_) out_ << std::string(live_width_ - text.size(), ' ');
    live_width_ = final ? 0 : text.size();
    if (final) out_ << '\n';
  } else {
    out_ << text << '\n';
  }
  out_.flush();
  shown_ = true;
}

}  // namespace shardload::tools
