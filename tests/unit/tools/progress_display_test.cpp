// tools/progress_display: what rank 0 shows for long work, driven by a fake clock.
#include "tools/progress_display.h"

#include <gtest/gtest.h>

#include <sstream>

namespace shardload::tools {
namespace {

constexpr int64_t kGiB = int64_t{1} << 30;

struct FakeClock {
  double now = 100.0;  // any origin: the display measures from its construction
  ProgressDisplay::Clock clock() {
    return [this] { return now; };
  }
};

Progress report(int64_t done, int64_t total, std::string phase = "transfer") {
  Progress p;
  p.operation = "load";
  p.phase = std::move(phase);
  p.bytes_done = done;
  p.bytes_total = total;
  return p;
}

TEST(ProgressDisplay, ShortOperationsShowNothing) {
  FakeClock c;
  std::ostringstream out;
  ProgressDisplay d(out, {}, c.clock(), "load");
  c.now += 0.5;
  d.update(report(kGiB / 2, kGiB));
  c.now += 0.4;
  d.finish(kGiB);
  EXPECT_EQ(out.str(), "");
  EXPECT_FALSE(d.shown());
}

TEST(ProgressDisplay, PlainLinesEveryFewSecondsThenSummary) {
  FakeClock c;
  std::ostringstream out;
  ProgressDisplay d(out, {.live = false, .after_seconds = 1.0, .every_seconds = 5.0}, c.clock(),
                    "load");
  c.now += 2.0;  // 1 GiB of 4 after 2 s: 0.5 GiB/s, 6 s to go
  d.update(report(kGiB, 4 * kGiB));
  EXPECT_EQ(out.str(), "load (transfer): 1.00 GiB of 4.00 GiB (25%), 0.50 GiB/s, ETA 6 s\n");
  c.now += 1.0;  // too soon for the next plain line
  d.update(report(kGiB + kGiB / 2, 4 * kGiB));
  EXPECT_EQ(out.str(), "load (transfer): 1.00 GiB of 4.00 GiB (25%), 0.50 GiB/s, ETA 6 s\n");
  c.now += 4.0;  // 7 s: 3.5 GiB
  d.update(report(3 * kGiB + kGiB / 2, 4 * kGiB));
  c.now += 1.0;
  d.update(report(4 * kGiB, 4 * kGiB, "transfer") /* not finished yet */);
  Progress last = report(4 * kGiB, 4 * kGiB);
  last.finished = true;
  d.update(last);
  d.finish(4 * kGiB);  // a second finish prints nothing more
  EXPECT_EQ(out.str(),
            "load (transfer): 1.00 GiB of 4.00 GiB (25%), 0.50 GiB/s, ETA 6 s\n"
            "load (transfer): 3.50 GiB of 4.00 GiB (87%), 0.50 GiB/s, ETA 1 s\n"
            "load: 4.00 GiB in 8.0 s (0.50 GiB/s)\n");
  EXPECT_TRUE(d.shown());
}

TEST(ProgressDisplay, LiveLineRewrittenInPlace) {
  FakeClock c;
  std::ostringstream out;
  ProgressDisplay d(out, {.live = true, .after_seconds = 1.0, .live_every_seconds = 0.2}, c.clock(),
                    "save");
  c.now += 1.0;
  d.update(report(3 * kGiB, 0, "write"));  // total unknown: no percentage, no ETA
  c.now += 0.1;                            // within the redraw interval: skipped
  d.update(report(3 * kGiB + 1, 0, "write"));
  c.now += 0.9;
  d.update(report(4 * kGiB, 8 * kGiB, ""));
  c.now += 2.0;
  d.finish(8 * kGiB);
  const std::string first = "save (write): 3.00 GiB, 3.00 GiB/s";
  const std::string second = "save: 4.00 GiB of 8.00 GiB (50%), 2.00 GiB/s, ETA 2 s";
  const std::string summary = "save: 8.00 GiB in 4.0 s (2.00 GiB/s)";
  EXPECT_EQ(out.str(), "\r" + first + "\r" + second + "\r" + summary +
                           std::string(second.size() - summary.size(), ' ') + "\n");
}

TEST(ProgressDisplay, SummaryForALongOperationWithoutReports) {
  FakeClock c;
  std::ostringstream out;
  ProgressDisplay d(out, {}, c.clock(), "convert");
  c.now += 90.0;
  d.finish(3 * kGiB / 2);
  EXPECT_EQ(out.str(), "convert: 1.50 GiB in 90.0 s (0.02 GiB/s)\n");
}

TEST(ProgressDisplay, ZeroThresholdShowsEverything) {
  FakeClock c;
  std::ostringstream out;
  ProgressDisplay d(out, {.after_seconds = 0}, c.clock(), "load");
  d.update(report(0, 100));  // at t = 0: no rate, no ETA
  d.finish(100);
  EXPECT_EQ(out.str(),
            "load (transfer): 0 B of 100 B (0%), - GiB/s\nload: 100 B in 0.0 s (- GiB/s)\n");
}

TEST(ProgressDisplay, FormatsBytesAndLongEtas) {
  EXPECT_EQ(ProgressDisplay::format_bytes(0), "0 B");
  EXPECT_EQ(ProgressDisplay::format_bytes(1023), "1023 B");
  EXPECT_EQ(ProgressDisplay::format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(ProgressDisplay::format_bytes(12 << 20), "12.0 MiB");
  EXPECT_EQ(ProgressDisplay::format_bytes(5 * kGiB / 4), "1.25 GiB");
  FakeClock c;
  std::ostringstream out;
  ProgressDisplay d(out, {.after_seconds = 0}, c.clock(), "load");
  c.now += 10.0;
  d.update(report(kGiB, 400 * kGiB));  // 399 GiB at 0.1 GiB/s: 3990 s
  EXPECT_NE(out.str().find("ETA 1h06m"), std::string::npos) << out.str();
}

}  // namespace
}  // namespace shardload::tools
