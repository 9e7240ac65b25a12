#include "command_line.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace h5depot::cli {
namespace {

const OptionSpec* FindLong(const std::vector<OptionSpec>& specs,
                           const std::string& name) {
  for (const OptionSpec& spec : specs) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

const OptionSpec* FindShort(const std::vector<OptionSpec>& specs, char name) {
  for (const OptionSpec& spec : specs) {
    if (spec.short_name != '\0' && spec.short_name == name) return &spec;
  }
  return nullptr;
}

bool LooksLikeOption(const std::string& arg) {
  return arg.size() > 1 && arg[0] == '-';
}

// Consumes the option at args[*i] (and its value, if separate) into `out`.
absl::Status TakeOption(const std::vector<std::string>& args,
                        const std::vector<OptionSpec>& specs, size_t* i,
                        ParsedArgs* out) {
  const std::string& arg = args[*i];
  const OptionSpec* spec = nullptr;
  std::optional<std::string> inline_value;
  if (arg.rfind("--", 0) == 0) {
    const size_t equals = arg.find('=');
    const std::string name = arg.substr(2, equals - 2);
    if (equals != std::string::npos) inline_value = arg.substr(equals + 1);
    spec = FindLong(specs, name);
  } else if (arg.size() == 2) {
    spec = FindShort(specs, arg[1]);
  }
  if (spec == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown option ", arg));
  }
  if (!spec->takes_value) {
    if (inline_value.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("option --", spec->name, " takes no value"));
    }
    out->options[spec->name] = "";
    return absl::OkStatus();
  }
  if (!inline_value.has_value()) {
    if (*i + 1 >= args.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("option ", arg, " needs a value"));
    }
    inline_value = args[++*i];
  }
  out->options[spec->name] = *inline_value;
  return absl::OkStatus();
}

}  // namespace

std::optional<std::string> ParsedArgs::Get(const std::string& name) const {
  auto it = options.find(name);
  if (it == options.end()) return std::nullopt;
  return it->second;
}

absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args,
                                     const std::vector<OptionSpec>& specs) {
  ParsedArgs parsed;
  bool options_ended = false;
  for (size_t i = 0; i < args.size(); ++i) {
    if (options_ended || !LooksLikeOption(args[i])) {
      parsed.positionals.push_back(args[i]);
    } else if (args[i] == "--") {
      options_ended = true;
    } else if (absl::Status s = TakeOption(args, specs, &i, &parsed); !s.ok()) {
      return s;
    }
  }
  return parsed;
}

absl::StatusOr<ParsedArgs> ParseLeadingOptions(
    const std::vector<std::string>& args, const std::vector<OptionSpec>& specs,
    size_t* rest) {
  ParsedArgs parsed;
  size_t i = 0;
  for (; i < args.size() && LooksLikeOption(args[i]); ++i) {
    if (args[i] == "--") {
      ++i;
      break;
    }
    if (absl::Status s = TakeOption(args, specs, &i, &parsed); !s.ok()) {
      return s;
    }
  }
  *rest = i;
  return parsed;
}

absl::StatusOr<absl::Duration> ParseDurationArg(const std::string& what,
                                                const std::string& text) {
  absl::Duration duration;
  double seconds = 0;
  if (absl::SimpleAtod(text, &seconds) && seconds >= 0 &&
      absl::ascii_isdigit(static_cast<unsigned char>(text.back()))) {
    duration = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(text, &duration) ||
             duration < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " wants a duration such as 30s, 5m, 1h30m or ",
                     "250ms; got \"", text, "\""));
  }
  return duration;
}

absl::StatusOr<uint64_t> ParseUint64Arg(const std::string& what,
                                        const std::string& text) {
  uint64_t value = 0;
  if (text.empty() || text[0] == '-' || text[0] == '+' ||
      !absl::SimpleAtoi(text, &value)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " wants a non-negative integer; got \"", text, "\""));
  }
  return value;
}

}  // namespace h5depot::cli
