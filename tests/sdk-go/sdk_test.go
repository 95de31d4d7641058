// The official OpenAI and Anthropic Go SDKs, pointed at tollgate by base URL alone.
package sdkgo

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go"
	anthropicoption "github.com/anthropics/anthropic-sdk-go/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

func TestOpenAIAndAnthropicGoSDKs(t *testing.T) {
	s := startStack(t)
	key := s.key(t, "open")
	ctx := context.Background()
	client := openai.NewClient(option.WithBaseURL(s.url+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0))
	messages := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello.")}

	answer, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "openai/gpt-4o-mini", Messages: messages, MaxTokens: openai.Int(5),
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := answer.Choices[0].Message.Content; got != strings.Repeat(" hello", 5) {
		t.Fatalf("content %q", got)
	}
	if answer.Usage.CompletionTokens != 5 {
		t.Fatalf("usage %+v", answer.Usage)
	}

	stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model: "openai/gpt-4o-mini", Messages: messages, MaxTokens: openai.Int(3),
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	var text strings.Builder
	var completion int64
	for stream.Next() {
		chunk := stream.Current()
		if len(chunk.Choices) > 0 {
			text.WriteString(chunk.Choices[0].Delta.Content)
		}
		if chunk.Usage.CompletionTokens > 0 {
			completion = chunk.Usage.CompletionTokens
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if text.String() != strings.Repeat(" hello", 3) || completion != 3 {
		t.Fatalf("stream %q, usage %d", text.String(), completion)
	}

	ant := anthropic.NewClient(anthropicoption.WithBaseURL(s.url), anthropicoption.WithAPIKey(key), anthropicoption.WithMaxRetries(0))
	message, err := ant.Messages.New(ctx, anthropic.MessageNewParams{
		Model: "anthropic/claude-sonnet-4-5", MaxTokens: 4,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Say hello."))},
	})
	if err != nil {
		t.Fatal(err)
	}
	if message.Content[0].Text != strings.Repeat(" hello", 4) || message.Usage.OutputTokens != 4 {
		t.Fatalf("message %+v", message)
	}

	broke := openai.NewClient(option.WithBaseURL(s.url+"/v1/"), option.WithAPIKey(s.key(t, "tiny")), option.WithMaxRetries(0))
	_, err = broke.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "openai/gpt-4o", Messages: messages, MaxTokens: openai.Int(50),
	})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 402 || apiErr.Type != "budget_exceeded" {
		t.Fatalf("want a 402 budget_exceeded, got %v", err)
	}
	if !strings.Contains(apiErr.RawJSON(), `"allocation":"tiny"`) {
		t.Fatalf("body %s", apiErr.RawJSON())
	}
}
