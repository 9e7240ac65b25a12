// A small command-line parser for `h5depot SUBCOMMAND ...`: options may come
// before or after positional arguments, as `--name value` or `--name=value`;
// `--` ends the options. Errors are INVALID_ARGUMENT with a message meant to
// be shown to the user as is.
#ifndef H5DEPOT_CLI_COMMAND_LINE_H_
#define H5DEPOT_CLI_COMMAND_LINE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace h5depot::cli {

struct OptionSpec {
  std::string name;         // without dashes: "id" matches --id
  bool takes_value = true;  // false: a switch such as --help
  char short_name = '\0';   // optional one-letter alias: 'o' matches -o
};

struct ParsedArgs {
  std::vector<std::string> positionals;        // in order; "-" is positional
  std::map<std::string, std::string> options;  // by spec name; "" for switches

  bool Has(const std::string& name) const { return options.count(name) > 0; }
  std::optional<std::string> Get(const std::string& name) const;
};

// Parses all of `args`.
absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& args,
                                     const std::vector<OptionSpec>& specs);

// Parses the leading options of `args` up to the first positional argument,
// which is not consumed: `*rest` is set to the index of that argument (or to
// args.size()). For global options that come before a subcommand.
absl::StatusOr<ParsedArgs> ParseLeadingOptions(
    const std::vector<std::string>& args, const std::vector<OptionSpec>& specs,
    size_t* rest);

// "30s", "1.5h", "2m30s", "250ms" (absl::ParseDuration), or a plain number
// of seconds. Negative durations are refused. `what` names the option.
absl::StatusOr<absl::Duration> ParseDurationArg(const std::string& what,
                                                const std::string& text);

// A non-negative decimal integer.
absl::StatusOr<uint64_t> ParseUint64Arg(const std::string& what,
                                        const std::string& text);

}  // namespace h5depot::cli

#endif  // H5DEPOT_CLI_COMMAND_LINE_H_
