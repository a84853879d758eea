// The Vercel AI SDK against the gateway: the default `openai(model)` provider (which calls /v1/responses) and
// the Anthropic provider (/v1/messages), each with generateText and streamText.
import { createAnthropic } from '@ai-sdk/anthropic';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, jsonSchema, stepCountIs, streamText, tool } from 'ai';

import { runCases, settings } from './common.mjs';

const { baseURL, apiKey, model } = settings();
const providers = {
  openai: createOpenAI({ baseURL: `${baseURL}/v1`, apiKey }),
  anthropic: createAnthropic({ baseURL: `${baseURL}/v1`, apiKey }),
};
const prompt = 'Hello there!';
const maxOutputTokens = 256; // the SDK's own guess for a model it does not know is 4096, with a warning

async function generate(provider) {
  const result = await generateText({ model: provider(model), prompt, maxOutputTokens, maxRetries: 0 });
  return { text: result.text, finishReason: result.finishReason, usage: result.usage };
}

async function stream(provider) {
  const errors = [];
  const result = streamText({
    model: provider(model),
    prompt,
    maxOutputTokens,
    maxRetries: 0,
    onError: ({ error }) => errors.push(String(error?.stack ?? error)),
  });
  const pieces = [];
  for await (const piece of result.textStream) pieces.push(piece);
  if (errors.length) throw new Error(errors.join('\n'));
  return { text: pieces.join(''), pieces: pieces.length, finishReason: await result.finishReason,
           usage: await result.usage };
}

// An agent's round trip: the model calls the tool, the SDK runs it and sends its result back, the model answers.
const weather = tool({
  description: 'The weather in a city.',
  inputSchema: jsonSchema({
    type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false,
  }),
  execute: async ({ city }) => `Sunny in ${city}, 21 C`,
});

async function toolRoundTrip(provider) {
  const result = await generateText({
    model: provider(model),
    prompt: 'What is the weather in Paris?',
    tools: { weather },
    stopWhen: stepCountIs(2),
    maxOutputTokens,
    maxRetries: 0,
  });
  return {
    steps: result.steps.map((step) => ({
      finishReason: step.finishReason,
      toolCalls: step.toolCalls.map((call) => ({ toolName: call.toolName, input: call.input })),
      toolResults: step.toolResults.map((done) => done.output),
      text: step.text,
    })),
    text: result.text,
    totalUsage: result.totalUsage,
  };
}

await runCases({
  openai_generate: () => generate(providers.openai),
  openai_stream: () => stream(providers.openai),
  anthropic_generate: () => generate(providers.anthropic),
  anthropic_stream: () => stream(providers.anthropic),
  openai_tools: () => toolRoundTrip(providers.openai),
  anthropic_tools: () => toolRoundTrip(providers.anthropic),
});
