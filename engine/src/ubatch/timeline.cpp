#include "cobatch/engine/ubatch/timeline.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ostream>

namespace cobatch::engine {

void timeline::reset() {
  std::lock_guard lock(mutex_);
  spans_.clear();
  origin_ = clock::now();
}

void timeline::add_host_span(std::string_view lane, std::int32_t ubatch, std::string_view label,
                             clock::time_point begin, clock::time_point end) {
  timeline_span s{std::string(lane), ubatch, std::string(label), since_origin_us(begin),
                  since_origin_us(end)};
  std::lock_guard lock(mutex_);
  spans_.push_back(std::move(s));
}

timeline::span_id timeline::begin_device_span(gpu::stream_ref s, std::string_view lane,
                                              std::int32_t ubatch, std::string_view label) {
  span_id id;
  {
    std::lock_guard lock(mutex_);
    id = spans_.size();
    spans_.push_back({std::string(lane), ubatch, std::string(label), -1.0, -1.0});
  }
  s.enqueue([this, id] { set_time(id, true, clock::now()); });
  return id;
}

void timeline::end_device_span(gpu::stream_ref s, span_id id, std::string_view label) {
  if (!label.empty()) {
    std::lock_guard lock(mutex_);
    if (id < spans_.size()) spans_[id].label.assign(label);
  }
  s.enqueue([this, id] { set_time(id, false, clock::now()); });
}

void timeline::set_time(span_id id, bool begin, clock::time_point t) {
  std::lock_guard lock(mutex_);
  if (id >= spans_.size()) return;  // a mark from before reset()
  (begin ? spans_[id].begin_us : spans_[id].end_us) = since_origin_us(t);
}

std::vector<timeline_span> timeline::spans() const {
  std::lock_guard lock(mutex_);
  return spans_;
}

std::size_t timeline::size() const {
  std::lock_guard lock(mutex_);
  return spans_.size();
}

namespace {

void write_json_string(std::ostream& out, std::string_view text) {
  out << '"';
  for (char c : text) {
    switch (c) {
      case '"': out << "\\\""; break;
      case '\\': out << "\\\\"; break;
      case '\n': out << "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out << buf;
        } else {
          out << c;
        }
    }
  }
  out << '"';
}

void write_xml_text(std::ostream& out, std::string_view text) {
  for (char c : text) {
    switch (c) {
      case '<': out << "&lt;"; break;
      case '>': out << "&gt;"; break;
      case '&': out << "&amp;"; break;
      case '"': out << "&quot;"; break;
      default: out << c;
    }
  }
}

// Lanes in a stable, readable order: host first, then compute, then
// communication, each in order of first appearance.
std::vector<std::string> lane_order(const std::vector<timeline_span>& spans) {
  std::vector<std::string> lanes;
  for (const auto& s : spans) {
    if (std::find(lanes.begin(), lanes.end(), s.lane) == lanes.end()) lanes.push_back(s.lane);
  }
  auto rank = [](const std::string& lane) {
    if (lane.rfind("host", 0) == 0) return 0;
    if (lane.rfind("compute", 0) == 0) return 1;
    if (lane.rfind("comm", 0) == 0) return 2;
    return 3;
  };
  std::stable_sort(lanes.begin(), lanes.end(),
                   [&](const std::string& a, const std::string& b) { return rank(a) < rank(b); });
  return lanes;
}

// Colour-blind-safe palette (Okabe-Ito), one colour per micro-batch.
constexpr const char* palette[] = {"#0072B2", "#E69F00", "#009E73", "#CC79A7",
                                   "#56B4E9", "#D55E00", "#F0E442", "#999999"};

double nice_step(double range) {
  const double raw = range / 8.0;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * mag >= raw) return m * mag;
  }
  return 10.0 * mag;
}

}  // namespace

void timeline::write_chrome_trace(std::ostream& out) const {
  const auto all = spans();
  const auto lanes = lane_order(all);
  out << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
  bool first = true;
  auto sep = [&] {
    if (!first) out << ",\n";
    first = false;
  };
  for (std::size_t i = 0; i < lanes.size(); ++i) {
    sep();
    out << R"({"ph":"M","name":"thread_name","pid":1,"tid":)" << i + 1 << R"(,"args":{"name":)";
    write_json_string(out, lanes[i]);
    out << "}}";
    sep();
    out << R"({"ph":"M","name":"thread_sort_index","pid":1,"tid":)" << i + 1
        << R"(,"args":{"sort_index":)" << i << "}}";
  }
  for (const auto& s : all) {
    if (!s.complete()) continue;
    const auto tid = std::find(lanes.begin(), lanes.end(), s.lane) - lanes.begin() + 1;
    sep();
    out << "{\"name\":";
    write_json_string(out, "mb" + std::to_string(s.ubatch) + (s.label.empty() ? "" : " " + s.label));
    out << ",\"cat\":";
    write_json_string(out, s.lane);
    char nums[96];
    std::snprintf(nums, sizeof nums, R"(,"ph":"X","pid":1,"tid":%td,"ts":%.3f,"dur":%.3f)", tid, s.begin_us,
                  s.duration_us());
    out << nums << R"(,"args":{"ubatch":)" << s.ubatch << "}}";
  }
  out << "\n]}\n";
}

void timeline::write_svg(std::ostream& out, const svg_options& options) const {
  const auto all = spans();
  const auto lanes = lane_order(all);
  double t0 = 0.0;
  double t1 = 0.0;
  bool any = false;
  std::int32_t max_mb = 0;
  for (const auto& s : all) {
    if (!s.complete()) continue;
    t0 = any ? std::min(t0, s.begin_us) : s.begin_us;
    t1 = any ? std::max(t1, s.end_us) : s.end_us;
    max_mb = std::max(max_mb, s.ubatch);
    any = true;
  }
  if (!any || t1 <= t0) t1 = t0 + 1.0;

  const int label_w = 90;
  const int top = options.title.empty() ? 8 : 32;
  const int plot_w = std::max(100, options.width - label_w - 16);
  const int lanes_h = static_cast<int>(lanes.size()) * options.lane_height;
  const int legend_y = top + lanes_h + 36;
  const int height = legend_y + 24;
  const double px_per_us = plot_w / (t1 - t0);
  auto x_of = [&](double us) { return label_w + (us - t0) * px_per_us; };

  char buf[256];
  out << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << options.width << "\" height=\"" << height
      << "\" viewBox=\"0 0 " << options.width << ' ' << height
      << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  out << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  if (!options.title.empty()) {
    out << "<text x=\"" << label_w << "\" y=\"20\" font-size=\"13\" font-weight=\"bold\">";
    write_xml_text(out, options.title);
    out << "</text>\n";
  }
  // Lanes and their names.
  for (std::size_t i = 0; i < lanes.size(); ++i) {
    const int y = top + static_cast<int>(i) * options.lane_height;
    std::snprintf(buf, sizeof buf,
                  "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>\n", label_w, y, plot_w,
                  options.lane_height, i % 2 ? "#f4f4f4" : "#fafafa");
    out << buf;
    out << "<text x=\"4\" y=\"" << y + options.lane_height / 2 + 4 << "\">";
    write_xml_text(out, lanes[i]);
    out << "</text>\n";
  }
  // Spans.
  for (const auto& s : all) {
    if (!s.complete()) continue;
    const auto lane = std::find(lanes.begin(), lanes.end(), s.lane) - lanes.begin();
    const double x = x_of(s.begin_us);
    const double w = std::max(0.5, s.duration_us() * px_per_us);
    const int y = top + static_cast<int>(lane) * options.lane_height + 3;
    const char* colour = palette[static_cast<std::size_t>(s.ubatch) % std::size(palette)];
    std::snprintf(buf, sizeof buf,
                  "<rect x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"%d\" fill=\"%s\" stroke=\"white\" "
                  "stroke-width=\"0.5\"><title>",
                  x, y, w, options.lane_height - 6, colour);
    out << buf;
    out << "mb" << s.ubatch << ' ';
    write_xml_text(out, s.label);
    std::snprintf(buf, sizeof buf, " %.3f-%.3f ms</title></rect>\n", s.begin_us / 1000.0, s.end_us / 1000.0);
    out << buf;
    if (w > 26) {
      std::snprintf(buf, sizeof buf, "<text x=\"%.2f\" y=\"%d\" fill=\"white\" font-size=\"10\">%d</text>\n",
                    x + 3, y + options.lane_height / 2 + 1, s.ubatch);
      out << buf;
    }
  }
  // Time axis.
  const int axis_y = top + lanes_h + 4;
  std::snprintf(buf, sizeof buf, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333\"/>\n", label_w,
                axis_y, label_w + plot_w, axis_y);
  out << buf;
  const double step = nice_step(t1 - t0);
  for (double t = std::ceil(t0 / step) * step; t <= t1 + 1e-9; t += step) {
    const double x = x_of(t);
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.2f\" y1=\"%d\" x2=\"%.2f\" y2=\"%d\" stroke=\"#333\"/>"
                  "<text x=\"%.2f\" y=\"%d\" text-anchor=\"middle\">%g ms</text>\n",
                  x, axis_y, x, axis_y + 4, x, axis_y + 16, t / 1000.0);
    out << buf;
  }
  // Legend.
  for (std::int32_t mb = 0; mb <= max_mb; ++mb) {
    const int x = label_w + mb * 110;
    std::snprintf(buf, sizeof buf,
                  "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\"/>"
                  "<text x=\"%d\" y=\"%d\">micro-batch %d</text>\n",
                  x, legend_y, palette[static_cast<std::size_t>(mb) % std::size(palette)], x + 16, legend_y + 10,
                  mb);
    out << buf;
  }
  out << "</svg>\n";
}

}  // namespace cobatch::engine
