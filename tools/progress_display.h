// Progress of long work on one stream: rank 0 of the command line (and Python's progress=True)
// shows bytes, GiB/s and ETA of loads, saves and conversions that take more than about a second,
// then a one-line summary.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>

#include "loader/progress.h"

namespace shardload::tools {

/// Shows one operation's progress: nothing while it is younger than `after_seconds`; then a live
/// line rewritten in place (`\r`) on a terminal, or a plain line every `every_seconds` otherwise;
/// and a one-line summary when it finishes, if it ran that long. Not collective: create it on the
/// rank that shows progress (rank 0) and feed it that rank's reports.
class ProgressDisplay {
 public:
  /// Seconds on a monotonic clock (a fake one in tests).
  using Clock = std::function<double()>;

  struct Options {
    bool live = false;                ///< rewrite one line in place (a terminal)
    double after_seconds = 1.0;       ///< show nothing for operations shorter than this
    double every_seconds = 5.0;       ///< interval of plain lines (not live)
    double live_every_seconds = 0.2;  ///< shortest interval between live redraws
  };

  /// Starts timing `operation` ("load", "save", "convert") now.
  ProgressDisplay(std::ostream& out, Options options, Clock clock, std::string operation);

  /// The display for stderr: live when stderr is a terminal; SHARDLOAD_PROGRESS_AFTER (seconds)
  /// overrides the one-second threshold (tests set 0).
  static ProgressDisplay for_stderr(std::string operation);

  /// Takes one report. A report with `finished` set prints the summary (see finish()).
  void update(const Progress& progress);
  /// A callback that feeds this display; the display must outlive the operation.
  ProgressCallback callback();
  /// Ends the display: prints the summary "<op>: <bytes> in <s> s (<GiB/s>)" when anything was
  /// shown or the operation ran for `after_seconds` or more. Only the first call prints.
  void finish(int64_t bytes);

  /// Whether a line (progress or summary) has been written.
  bool shown() const { return shown_; }

  /// "1.50 GiB", "12.0 MiB", "512 B".
  static std::string format_bytes(int64_t bytes);

 private:
  void write_line(const std::string& text, bool final);
  double elapsed() const;

  std::ostream& out_;
  Options options_;
  Clock clock_;
  std::string operation_;
  double start_ = 0;
  double last_line_ = -1;  ///< elapsed time of the last progress line, < 0 before the first
  size_t live_width_ = 0;  ///< width of the live line on screen, to blank it when rewritten
  bool shown_ = false;
  bool finished_ = false;
};

}  // namespace shardload::tools
