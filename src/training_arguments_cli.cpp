// The command line of TrainingArguments, on CLI11: one option per row of the
// field table, with Hugging Face's syntax.
//
// Every option triggers its callback as soon as it is parsed, so a flag given
// twice (or under two names) takes its last value, as with argparse. Hidden
// options carry the other spellings: `--a-b` for `--a_b`, the transformers 5
// aliases, `--no_x` for a bool that defaults to true, and the removed fields,
// whose callbacks throw the explanation.

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cctype>

#include "remat/training_arguments.h"
#include "training_arguments_internal.h"

namespace remat {
namespace {

using detail::FieldSpec;

// A TrainingArgumentsError raised inside CLI11's parse: a CLI11 error, so that
// app.exit() prints it, which keeps the original for parse() to rethrow.
class FieldParseError : public CLI::ValidationError {
 public:
  explicit FieldParseError(TrainingArgumentsError error)
      : CLI::ValidationError(error.what()), error_(std::move(error)) {}
  const TrainingArgumentsError& error() const { return error_; }

 private:
  TrainingArgumentsError error_;
};

bool looks_like_flag(const std::string& word) {
  return word.size() > 2 && word[0] == '-' && word[1] == '-' &&
         std::isalpha(static_cast<unsigned char>(word[2]));
}

// Runs `fn`, turning a TrainingArgumentsError into a FieldParseError.
template <typename Fn>
void reporting_errors(Fn&& fn) {
  try {
    fn();
  } catch (const TrainingArgumentsError& e) {
    throw FieldParseError(e);
  }
}

bool no_value(const CLI::results_t& words) {
  return words.empty() || (words.size() == 1 && words[0].empty());
}

CLI::callback_t field_callback(const FieldSpec& spec, TrainingArguments& args, std::string flag) {
  return [&spec, &args, flag](const CLI::results_t& words) {
    reporting_errors([&] {
      if (spec.min_words > 0 && no_value(words)) {
        detail::fail(spec.info.name, flag + " expects a value (" + spec.info.metavar + ")");
      }
      spec.parse_words(args, words, flag);
    });
    return true;
  };
}

// Every option may take no word, so that CLI11 never takes the next flag as
// a value (`--output_dir --bf16`); the callback reports a missing value.
CLI::Option* configure(CLI::Option* option, const FieldSpec& spec) {
  option->expected(0, spec.max_words)->trigger_on_parse()->type_name(spec.info.metavar);
  if (spec.max_words > 1) option->allow_extra_args();
  return option;
}

std::string hyphenated(std::string name) {
  std::replace(name.begin(), name.end(), '_', '-');
  return name;
}

// The spellings of a field besides its name, each with its hyphenated form.
std::vector<std::string> other_spellings(const TrainingArgumentsField& info) {
  std::vector<std::string> names;
  auto add = [&](const std::string& name) {
    if (name != info.name && std::find(names.begin(), names.end(), name) == names.end()) {
      names.push_back(name);
    }
  };
  add(hyphenated(info.name));
  for (const auto& alias : info.aliases) {
    add(alias);
    add(hyphenated(alias));
  }
  return names;
}

std::string shown_default(const TrainingArgumentsField& info) {
  return info.default_value == "null" ? "unset" : info.default_value;
}

std::string description(const TrainingArgumentsField& info) {
  return info.help + (info.valid.empty() ? "" : " [" + info.valid + "]");
}

void add_field(CLI::App& app, const FieldSpec& spec, TrainingArguments& args) {
  const auto& info = spec.info;
  const auto flag = "--" + info.name;
  configure(app.add_option(flag, field_callback(spec, args, flag), description(info)), spec)
      ->option_text(info.metavar + " (default: " + shown_default(info) + ")")
      ->group(info.section);
  for (const auto& name : other_spellings(info)) {
    configure(app.add_option("--" + name, field_callback(spec, args, "--" + name)), spec)
        ->group("");
  }
  if (info.type == "bool" && info.default_value == "true") {
    for (const auto& name : {"no_" + info.name, "no-" + hyphenated(info.name)}) {
      app.add_flag_callback("--" + name, [&info, &args] { info.set(args, false); })
          ->trigger_on_parse()
          ->group("");
    }
  }
}

void add_removed_field(CLI::App& app, const detail::Choice& removed) {
  std::vector<std::string> names = {removed.name};
  if (hyphenated(removed.name) != removed.name) names.push_back(hyphenated(removed.name));
  for (const auto& name : names) {
    const auto flag = "--" + name;
    app.add_option(flag,
                   [&removed, flag](const CLI::results_t&) -> bool {
                     throw FieldParseError(detail::removed_field_error(removed, flag));
                   })
        ->expected(0, 1)
        ->trigger_on_parse()
        ->group("");
  }
}

// "unrecognized arguments: --lerning_rate (did you mean --learning_rate?) 3"
std::string unrecognized_arguments(const CLI::App& app) {
  std::vector<std::string> names;
  for (const auto* option : app.get_options()) {
    for (const auto& name : option->get_lnames()) names.push_back(name);
  }
  std::string message = "unrecognized arguments:";
  for (const auto& word : app.remaining()) {
    message += " " + word;
    if (looks_like_flag(word)) {
      message += detail::did_you_mean(word.substr(0, word.find('=')), names, true);
    }
  }
  return message;
}

std::pair<TrainingArguments, std::vector<std::string>> parse_command_line(int argc,
                                                                          const char* const* argv,
                                                                          bool keep_unknown) {
  CLI::App app{
      "Training arguments, with the names, syntax and defaults of Hugging Face's "
      "TrainingArguments."};
  app.get_formatter()->column_width(44);
  TrainingArguments args;
  add_training_arguments(app, args);
  app.allow_extras(keep_unknown);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    throw HelpRequested(app.help());
  } catch (const FieldParseError& e) {
    throw e.error();
  } catch (const CLI::ExtrasError&) {
    const auto remaining = app.remaining();
    throw TrainingArgumentsError(remaining.empty() ? "" : remaining.front(),
                                 unrecognized_arguments(app));
  } catch (const CLI::ParseError& e) {
    throw TrainingArgumentsError("", e.what());
  }
  args.validate();
  return {args, keep_unknown ? app.remaining() : std::vector<std::string>{}};
}

}  // namespace

void add_training_arguments(CLI::App& app, TrainingArguments& args) {
  for (const auto& spec : detail::field_specs()) add_field(app, spec, args);
  for (const auto& removed : detail::removed_fields()) add_removed_field(app, removed);
  app.failure_message([](const CLI::App* failed, const CLI::Error& error) {
    // CLI11 names an ExtrasError after the app, so its type tells it apart.
    if (dynamic_cast<const CLI::ExtrasError*>(&error) == nullptr) {
      return CLI::FailureMessage::simple(failed, error);
    }
    return unrecognized_arguments(*failed) + "\nRun with --help for more information.\n";
  });
}

TrainingArguments TrainingArguments::parse(int argc, const char* const* argv) {
  return parse_command_line(argc, argv, false).first;
}

std::pair<TrainingArguments, std::vector<std::string>> TrainingArguments::parse_known_args(
    int argc, const char* const* argv) {
  return parse_command_line(argc, argv, true);
}

}  // namespace remat
